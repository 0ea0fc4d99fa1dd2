"""Gradual pruning and dynamic sparse training (lth_jax.sparsity.during_training,
lth_jax.methods.sparse_training) against hand computations, inside training, vmapped and resumed."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import (Collect, checkpoint_saved, drive, kill_main_py, leaves_equal, main_py, numbers,
                           resumed_at, small_config)
from lth_jax import experiment
from lth_jax.methods import common, registry, sparse_training
from lth_jax.sparsity import during_training
from lth_jax.sparsity import masks as masks_lib
from lth_jax.training import TrainState



def test_polynomial_schedule_at_chosen_steps():
  # t0 = 10, n = 4 steps of dt = 5, s_i = 0, s_f = 0.8: s = 0.8 - 0.8 (1 - (t - 10)/20)^3
  s = [float(during_training.polynomial_sparsity(t, 0.0, 0.8, 10, 4, 5)) for t in (5, 10, 15, 20, 30, 40)]
  assert s == pytest.approx([0.0, 0.0, 0.8 - 0.8 * 0.75 ** 3, 0.8 - 0.8 * 0.5 ** 3, 0.8, 0.8])
  on = [t for t in range(40) if during_training.is_update(t, 5, 10, 30)]
  assert on == [10, 15, 20, 25, 30]


def test_cosine_drop_fraction_decays_to_zero_at_t_end():
  got = [float(during_training.cosine_drop(t, 0.3, 100)) for t in (0, 50, 100, 120)]
  assert got == pytest.approx([0.3, 0.15, 0.0, 0.0], abs=1e-7)


PARAMS = {"a": jnp.array([[0.5, -0.1, 0.0, 2.0], [0.0, -0.3, 0.0, 0.0]]), "b": jnp.array([1.0, 2.0])}
MASKS = {"a": jnp.array([[1., 1., 0., 1.], [0., 1., 0., 0.]]), "b": jnp.ones(2)}
GRADS = {"a": jnp.array([[9., 1., 4., 0.], [7., 8., 3., 5.]]), "b": jnp.array([5., 5.])}
WHICH = {"a": True, "b": False}


def test_drop_and_grow_drops_the_smallest_and_grows_at_the_largest_gradient():
  # alive |w|: 0.5, 0.1, 2.0, 0.3; k = round(0.5 * 4) = 2 drops 0.1 and 0.3 (positions 1 and 5).
  # Candidates (inactive after the drop): positions 1, 2, 4, 5, 6, 7 with |g| 1, 4, 7, 8, 3, 5 -> grow 5 and 4.
  masks, kept = during_training.drop_and_grow(PARAMS, MASKS, GRADS, 0.5, WHICH)
  np.testing.assert_array_equal(masks["a"], [[1, 0, 0, 1], [1, 1, 0, 0]])
  np.testing.assert_array_equal(kept["a"], [[1, 0, 0, 1], [0, 0, 0, 0]])
  np.testing.assert_array_equal(masks["b"], MASKS["b"])   # not prunable: untouched
  assert int(masks["a"].sum()) == int(MASKS["a"].sum())


def _state(tx):
  opt_state = jax.tree.map(jnp.ones_like, tx.init(PARAMS))   # momentum 1 everywhere
  return TrainState(step=jnp.asarray(10, jnp.int32), params=PARAMS, batch_stats={}, masks=MASKS,
                    opt_state=opt_state, rng=jax.random.key(0))


def test_rigl_update_regrows_at_zero_with_zeroed_moments_and_keeps_counts():
  tx = optax.trace(0.9)
  hook = sparse_training.DropAndGrow("gradient", every=5, drop_fraction=1.0, t_end=20, which=(True, False))
  new = hook(_state(tx), GRADS, tx)
  # at t=10 of t_end=20 the drop fraction is 0.5 (1 + cos(pi/2)) = 0.5: the update of the test above.
  # Position 5 (-0.3) is dropped and regrown: it starts again from 0, with its momentum zeroed.
  np.testing.assert_array_equal(new.masks["a"], [[1, 0, 0, 1], [1, 1, 0, 0]])
  np.testing.assert_array_equal(new.params["a"], [[0.5, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(new.opt_state.trace["a"], [[1, 0, 0, 1], [0, 0, 0, 0]])
  np.testing.assert_array_equal(new.opt_state.trace["b"], [1, 1])
  skipped = hook(_state(tx).replace(step=jnp.asarray(11, jnp.int32)), GRADS, tx)   # not an update step
  assert leaves_equal(skipped.masks, MASKS)


def test_set_grows_at_random_positions_among_the_inactive_ones():
  tx = optax.trace(0.9)
  hook = sparse_training.DropAndGrow("random", every=5, drop_fraction=1.0, t_end=20, which=(True, False))
  new = hook(_state(tx), GRADS, tx)
  kept = np.array([[1, 0, 0, 1], [0, 0, 0, 0]])
  grown = np.asarray(new.masks["a"]) - kept
  assert grown.min() == 0 and grown.sum() == 2          # the two kept stay, two grow elsewhere
  assert leaves_equal(new.params["a"], PARAMS["a"] * kept)


def _run(method, vmap=False, **overrides):
  c = small_config(**{"method": method, "prune.sparsity": 0.8, "gradual.every": 3, "sparse.every": 3,
                      "prune.distribution": "erk", **overrides})
  exp = experiment.build(c)
  rec = Collect()
  drive(sparse_training.sparse_run(exp, method, 0.8, rec), vmap)
  return exp, rec


def test_gradual_reaches_the_scheduled_counts_and_pruned_weights_stay_zero():
  exp, rec = _run("gradual")
  hook = sparse_training.gradual_hook(exp, 0.8)
  state = rec.states[0]
  assert [r["remaining"] for r in masks_lib.layer_report(state.masks, exp.which)] == list(hook.counts[-1])
  assert leaves_equal(state.params, masks_lib.apply(state.params, state.masks))
  # the per-event counts follow the cubic schedule (ERK shares): non-increasing, from dense to 80%
  totals = [sum(c) for c in hook.counts]
  assert totals == sorted(totals, reverse=True) and totals[0] == masks_lib.count(state.masks, exp.which)[1]
  assert masks_lib.sparsity(state.masks, exp.which) == pytest.approx(0.8, abs=1e-3)


def test_gradual_curve_carries_the_sparsity_in_force_at_each_epochs_end():
  # Zhu & Gupta by hand: T steps in all, t0 = round(0.1 T), n = (round(0.6 T) - t0) // 3 events of dt = 3;
  # after epoch e the last event done is k = min(n, (e * steps_per_epoch - t0) // 3), and one global
  # threshold keeps round((1 - s_k) * total) weights, s_k = 0.8 - 0.8 (1 - k/n)^3.
  exp, rec = _run("gradual", **{"prune.distribution": "global"})
  spe, epochs = exp.steps_per_epoch, exp.config.train.epochs
  t0 = max(1, round(0.1 * spe * epochs))
  n = (round(0.6 * spe * epochs) - t0) // 3
  total = masks_lib.count(masks_lib.init(exp.init_params), exp.which)[1]
  expected = []
  for epoch in range(1, epochs + 1):
    k = min(n, (epoch * spe - t0) // 3)
    s = 0.0 if k < 0 else 0.8 - 0.8 * (1 - k / n) ** 3
    expected.append(1 - round((1 - s) * total) / total)
  assert len(set(expected)) > 2   # the schedule moves within the run: the test tells epochs apart
  assert [row["sparsity"] for row in rec.records[0]["curve"]] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("method", ["static", "set", "rigl"])
def test_sparse_training_keeps_every_layer_count(method):
  exp, rec = _run(method)
  start = sparse_training.random_masks(exp, 0.8, f"{method}@0.8")
  counts = [r["remaining"] for r in masks_lib.layer_report(start, exp.which)]
  state = rec.states[0]
  assert [r["remaining"] for r in masks_lib.layer_report(state.masks, exp.which)] == counts
  assert leaves_equal(state.params, masks_lib.apply(state.params, state.masks))
  assert (rec.records[0]["mask_changed"] == 0.0) == (method == "static")


def test_vmapped_sweep_equals_separate_runs():
  c = small_config(**{"method": "rigl", "sparse.every": 3, "prune.distribution": "uniform"})
  exp = experiment.build(c)
  alone, together = Collect(), Collect()
  sweep = registry.get("rigl").sweep
  drive(sweep(exp, _dense_stub(), [0.5, 0.8], alone), vmap=False)
  drive(sweep(exp, _dense_stub(), [0.5, 0.8], together), vmap=True)
  for a, b in zip(alone.states, together.states):
    assert leaves_equal(a.masks, b.masks)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
      np.testing.assert_allclose(x, y, atol=1e-5)


def _dense_stub():
  return common.DenseRun(None, None, None, 1.0)


ARGS = ["--config=configs/default.py", "--config.method=rigl", "--config.train.epochs=4", "--config.sparse.every=7",
        "--config.prune.distribution=erk", "--config.checkpoint.every=1", "--config.train.log_every=1",
        "--config.metrics.ood=('uniform_noise',)"]


def test_rigl_killed_mid_training_resumes_to_identical_numbers(tmp_path):
  straight = main_py(*ARGS, f"--config.workdir={tmp_path / 'straight'}")
  assert straight.returncode == 0, straight.stderr[-2000:]
  killed = tmp_path / "killed"
  # killed in epoch 3 or later, between mask updates, once epoch 2's checkpoint is complete
  kill_main_py(*ARGS, f"--config.workdir={killed}", until=checkpoint_saved(killed, "rigl@0.8/0-4", 2))
  assert not (killed / "results.json").exists() or not numbers(killed)[0]
  resumed = main_py(*ARGS, f"--config.workdir={killed}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert resumed_at(resumed.stderr)["rigl@0.8"] >= 2
  assert numbers(killed) == numbers(tmp_path / "straight")


@pytest.mark.parametrize("key, value, message", [
    ("prune.distribution", "erdos", "config.prune.distribution='erdos'; allowed: scope, global, uniform, erk, map"),
    ("gradual.every", 0, "config.gradual.every=0 must be >= 1"),
    ("sparse.drop_fraction", 1.5, "config.sparse.drop_fraction=1.5 must be in [0, 1]"),
    ("sparse.end", 0.0, "config.sparse.end=0.0 must be in (0, 1]"),
    ("prune.layer_sparsity", ("output/*",), "config.prune.layer_sparsity entry 'output/*' must read"),
])
def test_bad_values_are_refused_naming_the_key(key, value, message):
  from lth_jax.errors import UserError
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                     .replace("]", r"\]").replace("*", r"\*")):
    experiment.validate(small_config(**{key: value}))


def test_methods_common_prune_follows_the_distribution():
  exp = experiment.build(small_config(**{"prune.distribution": "uniform"}))
  masks = common.prune(exp, exp.init_params, masks_lib.init(exp.init_params), 0.75, "test")
  rows = masks_lib.layer_report(masks, exp.which)
  remaining, total = masks_lib.count(masks, exp.which)
  assert remaining == total - round(0.75 * total)
  for row in rows:   # every layer within one weight of a quarter of it
    assert abs(row["remaining"] - row["total"] / 4) < 1
