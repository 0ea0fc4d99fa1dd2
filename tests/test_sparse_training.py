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
from tests.helpers import slow



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
  # alive |w|: 0.5, 0.1, 2.0, 0.3; k = int(0.5 * 4) = 2 drops 0.1 and 0.3 (positions 1 and 5).
  # Candidates (inactive after the drop): positions 1, 2, 4, 5, 6, 7 with |g| 1, 4, 7, 8, 3, 5 -> grow 5 and 4.
  # Position 5 was alive before: only position 4 is a new connection.
  masks, grown = during_training.drop_and_grow(PARAMS, MASKS, GRADS, 0.5, WHICH)
  np.testing.assert_array_equal(masks["a"], [[1, 0, 0, 1], [1, 1, 0, 0]])
  np.testing.assert_array_equal(grown["a"], [[0, 0, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(masks["b"], MASKS["b"])   # not prunable: untouched
  assert not np.any(np.asarray(grown["b"]))
  assert int(masks["a"].sum()) == int(MASKS["a"].sum())


def test_drop_count_is_rigls_floor():
  # rigl's _get_update_op: n_prune = int32(float32(alive) * drop_fraction). 4 alive at 0.7: 2.8 -> 2
  # (round would give 3); at 0.74 of 4: 2.96 -> 2. Grow scores 0 at the alive positions, so that every
  # grown weight is a new connection and the mask shows the count.
  grow_scores = {"a": jnp.where(MASKS["a"] == 1, 0.0, GRADS["a"] + 1), "b": GRADS["b"]}
  for fraction in (0.7, 0.74):
    masks, grown = during_training.drop_and_grow(PARAMS, MASKS, grow_scores, fraction, WHICH)
    dropped = (np.asarray(MASKS["a"]) == 1) & (np.asarray(masks["a"]) == 0)
    assert int(dropped.sum()) == int(np.asarray(grown["a"]).sum()) == int(np.float32(4) * np.float32(fraction)) == 2


def _state(tx):
  opt_state = jax.tree.map(jnp.ones_like, tx.init(PARAMS))   # momentum 1 everywhere
  return TrainState(step=jnp.asarray(10, jnp.int32), params=PARAMS, batch_stats={}, masks=MASKS,
                    opt_state=opt_state, rng=jax.random.key(0))


def test_rigl_update_keeps_a_regrown_weight_and_starts_only_new_connections_at_zero():
  tx = optax.trace(0.9)
  hook = sparse_training.DropAndGrow("gradient", every=5, drop_fraction=1.0, t_end=20, which=(True, False))
  new = hook(_state(tx), GRADS, tx)
  # at t=10 of t_end=20 the drop fraction is 0.5 (1 + cos(pi/2)) = 0.5: the update of the test above.
  # Position 5 (-0.3) is dropped and grown back: as in rigl (new_connections = grown & was inactive)
  # it keeps its weight and its momentum. Position 4 was inactive: it starts at 0 with momentum 0.
  # Position 1 (-0.1) is dropped: its weight goes to 0 (lth_jax keeps pruned weights at 0).
  np.testing.assert_array_equal(new.masks["a"], [[1, 0, 0, 1], [1, 1, 0, 0]])
  np.testing.assert_array_equal(new.params["a"], np.array([[0.5, 0.0, 0.0, 2.0], [0.0, -0.3, 0.0, 0.0]], np.float32))
  np.testing.assert_array_equal(new.opt_state.trace["a"], [[1, 1, 1, 1], [0, 1, 1, 1]])
  np.testing.assert_array_equal(new.opt_state.trace["b"], [1, 1])
  skipped = hook(_state(tx).replace(step=jnp.asarray(11, jnp.int32)), GRADS, tx)   # not an update step
  assert leaves_equal(skipped.masks, MASKS)


def _tiny_recipe(hook, tx):
  from lth_jax.models import mlp
  from lth_jax.training import step
  return step.Recipe(model=mlp.mlp(3, widths=(6,)), tx=tx, lr=lambda t: 0.1, batch_size=8, steps_per_epoch=1,
                     mask_update=hook)


def _tiny_state(recipe, step_count):
  from lth_jax.training import TrainState
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, 8))
  params = recipe.model.init(jax.random.key(0), x)["params"]
  masks = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.5, p.dtype) if p.ndim == 2 else jnp.ones_like(p),
                       params)
  params = masks_lib.apply(params, masks)
  # a nonzero momentum everywhere, so that an optimizer step would change it
  opt_state = jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape), v.dtype), recipe.tx.init(params))
  state = TrainState(step=jnp.asarray(step_count, jnp.int32), params=params, batch_stats={}, masks=masks,
                     opt_state=opt_state, rng=jax.random.key(1))
  return state, (x, y)


def test_rigl_update_iteration_takes_no_optimizer_step_and_grows_by_that_steps_gradient():
  """rigl's SparseRigLOptimizer: on a mask-update iteration the optimizer is not applied; the weights
  the update drops from are those the iteration started with, grown by its dense gradient there."""
  from lth_jax.training import step
  tx = optax.trace(0.9)
  hook = sparse_training.DropAndGrow("gradient", every=5, drop_fraction=0.5, t_end=20, which=(False, True) * 2)
  assert [leaf.ndim == 2 for leaf in jax.tree.leaves(_tiny_state(_tiny_recipe(hook, tx), 4)[0].params)] == \
      [False, True, False, True]   # bias, kernel per layer: `which` above marks the kernels
  recipe = _tiny_recipe(hook, tx)
  state, (x, y) = _tiny_state(recipe, 4)    # this iteration makes it step 5: an update
  new, _ = step.train_step(recipe, state, (x, y))
  assert int(new.step) == 5
  grads = jax.grad(lambda p: step.cross_entropy(recipe.model.apply({"params": p}, x), y).mean())(state.params)
  fraction = 0.5 * 0.5 * (1 + np.cos(np.pi * 5 / 20))
  for name in ("hidden_0", "output"):
    w, m, g = (np.asarray(t[name]["kernel"]).ravel() for t in (state.params, state.masks, grads))
    alive = m == 1
    k = int(np.float32(alive.sum()) * np.float32(fraction))
    order = np.argsort(np.where(alive, np.abs(w), np.inf))
    stay = alive.copy()
    stay[order[:k]] = False
    grow_order = np.argsort(np.where(stay, -np.inf, np.abs(g)))[::-1]
    grow = np.zeros_like(stay)
    grow[grow_order[:k]] = True
    expected_mask = stay | grow
    new_w = np.asarray(new.params[name]["kernel"]).ravel()
    new_trace = np.asarray(new.opt_state.trace[name]["kernel"]).ravel()
    old_trace = np.asarray(state.opt_state.trace[name]["kernel"]).ravel()
    np.testing.assert_array_equal(np.asarray(new.masks[name]["kernel"]).ravel(), expected_mask)
    carried = expected_mask & alive            # alive before and after: untouched by any optimizer step
    np.testing.assert_array_equal(new_w[carried], w[carried])
    np.testing.assert_array_equal(new_trace[carried], old_trace[carried])
    fresh = expected_mask & ~alive              # new connections: zero weight, zero momentum
    assert fresh.sum() > 0
    np.testing.assert_array_equal(new_w[fresh], 0.0)
    np.testing.assert_array_equal(new_trace[fresh], 0.0)
    np.testing.assert_array_equal(new_w[~expected_mask], 0.0)
  # the biases too are left as they were: the whole optimizer step is skipped
  assert leaves_equal(new.params["hidden_0"]["bias"], state.params["hidden_0"]["bias"])
  # the next iteration (step 6) is an ordinary one: the optimizer steps
  after, _ = step.train_step(recipe, new, (x, y))
  assert int(after.step) == 6 and not leaves_equal(after.params["hidden_0"]["bias"], new.params["hidden_0"]["bias"])
  assert leaves_equal(after.masks, new.masks)


def test_set_update_iteration_follows_the_optimizer_step():
  """rigl's SparseSETOptimizer applies the gradients, then updates the mask: SET does not skip."""
  from lth_jax.training import step
  tx = optax.trace(0.9)
  hook = sparse_training.DropAndGrow("random", every=5, drop_fraction=0.5, t_end=20, which=(False, True) * 2)
  recipe = _tiny_recipe(hook, tx)
  state, batch = _tiny_state(recipe, 4)
  new, _ = step.train_step(recipe, state, batch)
  assert not leaves_equal(new.params["hidden_0"]["bias"], state.params["hidden_0"]["bias"])
  assert not leaves_equal(new.masks, state.masks)


def test_set_grows_at_random_positions_among_the_inactive_ones():
  tx = optax.trace(0.9)
  hook = sparse_training.DropAndGrow("random", every=5, drop_fraction=1.0, t_end=20, which=(True, False))
  new = hook(_state(tx), GRADS, tx)
  kept = np.array([[1, 0, 0, 1], [0, 0, 0, 0]])
  grown = np.asarray(new.masks["a"]) - kept
  assert grown.min() == 0 and grown.sum() == 2          # the two kept stay, two grow elsewhere
  # a weight grown back keeps its value; new connections (0 in PARAMS where inactive) start at 0
  assert leaves_equal(new.params["a"], PARAMS["a"] * np.asarray(new.masks["a"]))


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


def test_schedules_span_train_steps_when_it_cuts_the_last_epoch_short():
  # train.steps ends training inside an epoch: gradual's last pruning step and SET / RigL's t_end are
  # fractions of those steps, not of the whole epochs, and gradual reaches its target by the end
  exp, rec = _run("gradual", **{"train.steps": 37, "prune.distribution": "global"})
  assert exp.config.train.epochs * exp.steps_per_epoch > 37
  assert sparse_training.total_steps(exp) == 37 and rec.records[0]["train_steps"] == 37
  assert rec.records[0]["prune_steps"][-1] <= round(0.6 * 37)
  assert masks_lib.sparsity(rec.states[0].masks, exp.which) == pytest.approx(0.8, abs=1e-3)
  exp, rec = _run("rigl", **{"train.steps": 37})
  assert rec.records[0]["t_end"] == round(0.75 * 37)


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


@slow
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
    ("prune.distribution", "erdos",
     "config.prune.distribution='erdos'; allowed: scope, global, uniform, uniform_first_dense, erk, map"),
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
