import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import experiment, masks, pruning
from lth_jax.methods import common, lottery
from lth_jax.training import trainer as trainer_lib
from tests.helpers import Collect, drive, fit, leaves_equal, oneshot, run_method, small_config


def test_dense_then_oneshot_fine_tunes_the_pruned_trained_weights():
  exp = experiment.build(small_config())
  out = Collect()
  dense = drive(common.dense(exp, out))
  state = oneshot(exp, dense, 0.75, out, reset="none")
  expected = pruning.magnitude(dense.state.params, masks.init(dense.state.params), 0.75, which=exp.which)
  assert leaves_equal(state.masks, expected)
  assert masks.count(state.masks, exp.which) == (
      masks.count(expected, exp.which)[1] - round(0.75 * masks.count(expected, exp.which)[1]),
      masks.count(expected, exp.which)[1])
  rec = out.records[-1]
  assert rec["method"] == "oneshot" and rec["epochs_trained"] == 2
  assert rec["accuracy_drop"] == pytest.approx(out.records[0]["test_accuracy"] - rec["test_accuracy"])
  assert 1 <= rec["best_epoch"] <= 2 and rec["accuracy_before_retrain"] is not None


def test_lottery_ticket_rewinds_to_exact_initial_values():
  exp = experiment.build(small_config())
  out = Collect()
  dense = drive(common.dense(exp, out))
  assert leaves_equal(dense.rewind_params, exp.init_params)
  oneshot(exp, dense, 0.8, out, reset="rewind")
  assert leaves_equal(out.rewinds[-1], exp.init_params)
  # The retraining starts from theta_0 under the mask: replay its first epoch from there by hand.
  trainer = exp.trainer(exp.config.train.epochs)
  ticket = out.states[-1]
  start = trainer.init_state(exp.init_params, {}, ticket.masks, exp.key("oneshot_reinit@0.8"))
  assert leaves_equal(start.params, masks.apply(exp.init_params, ticket.masks))
  replay, _ = fit(trainer, start, exp.data, exp.config.train.epochs)
  assert leaves_equal(replay.params, ticket.params)


def test_rewinding_to_an_epoch_uses_the_weights_after_that_epoch():
  exp = experiment.build(small_config(**{"prune.rewind_epoch": 2}))
  out = Collect()
  dense = drive(common.dense(exp, out))
  trainer = exp.trainer(exp.config.train.epochs)
  state = trainer.init_state(exp.init_params, {}, masks.init(exp.init_params), exp.key("dense"))
  state, _ = fit(trainer, state, exp.data, 2)
  assert leaves_equal(dense.rewind_params, state.params)
  oneshot(exp, dense, 0.5, out, reset="rewind")
  assert out.records[-1]["epochs_trained"] == 2   # epochs 3..4 of the same schedule
  assert out.records[-1]["curve"][0]["epoch"] == 3


def test_random_reinit_keeps_the_mask_and_differs_from_init():
  exp = experiment.build(small_config())
  out = Collect()
  dense = drive(common.dense(exp, out))
  ticket = oneshot(exp, dense, 0.8, out, reset="rewind")
  control = oneshot(exp, dense, 0.8, out, reset="random")
  assert leaves_equal(control.masks, ticket.masks)
  reinit = out.rewinds[-1]
  alive = [np.asarray(m) == 1 for m in jax.tree.leaves(ticket.masks)]
  assert all(not np.array_equal(np.asarray(r)[a], np.asarray(i)[a])
             for r, i, a, w in zip(jax.tree.leaves(reinit), jax.tree.leaves(exp.init_params), alive,
                                   jax.tree.leaves(exp.which)) if w)
  for p, m in zip(jax.tree.leaves(control.params), jax.tree.leaves(control.masks)):
    assert np.all(np.asarray(p)[np.asarray(m) == 0] == 0)


@pytest.mark.parametrize("reset", ["init", "rewind", "none"])
def test_iterative_reaches_the_target_after_rounds(reset):
  exp = experiment.build(small_config(**{"iterative.rounds": 3, "iterative.reset": reset,
                                         "iterative.round_epochs": 2}))
  out = Collect()
  dense = drive(common.dense(exp, out))
  drive(lottery.iterative_sweep(exp, dense, [0.875], out))
  rounds = [r for r in out.records if r["method"] == "iterative"]
  assert [r["round"] for r in rounds] == [1, 2, 3]
  total = masks.count(masks.init(exp.init_params), exp.which)[1]
  remaining, rate = total, pruning.rate_per_round(0.875, 3)
  for r, state in zip(rounds, out.states[1:]):
    remaining -= round(rate * remaining)
    assert masks.count(state.masks, exp.which)[0] == remaining
  assert rounds[-1]["sparsity"] == pytest.approx(0.875, abs=2 / total)
  # masks shrink monotonically round to round
  for a, b in zip(out.states[1:], out.states[2:]):
    assert all(bool(jnp.all(y <= x)) for x, y in zip(jax.tree.leaves(a.masks), jax.tree.leaves(b.masks)))
  if reset == "init":
    assert all(leaves_equal(rw, exp.init_params) for rw in out.rewinds[1:])


def test_iterative_final_epochs_and_random_control():
  exp = experiment.build(small_config(**{"iterative.rounds": 2, "iterative.rate": 0.11, "iterative.reset": "none",
                                         "iterative.round_epochs": 1, "iterative.final_epochs": 3,
                                         "iterative.random_control_every": 1}))
  out = Collect()
  drive(lottery.iterative_sweep(exp, drive(common.dense(exp, out)), [0.5], out))
  runs = [(r["method"], r["round"], r["epochs_trained"]) for r in out.records[1:]]
  assert runs == [("iterative", 1, 1), ("iterative_random", 1, 1), ("iterative", 2, 3), ("iterative_random", 2, 3)]
  assert leaves_equal(out.states[1].masks, out.states[2].masks)


def test_dynamic_prunes_at_the_requested_epochs():
  exp = experiment.build(small_config(**{"train.epochs": 6, "dynamic.at": (1 / 3, 2 / 3),
                                         "dynamic.fraction": 0.17}))
  out = Collect()
  state = drive(lottery.dynamic_run(exp, 0.3, out))
  rec = out.records[-1]
  total = masks.count(masks.init(exp.init_params), exp.which)[1]
  first = total - round(0.17 * total)
  second = first - round(0.17 * first)
  assert [e["epoch"] for e in rec["prune_events"]] == [2, 4]
  assert [e["sparsity"] for e in rec["prune_events"]] == pytest.approx([1 - first / total, 1 - second / total])
  assert masks.count(state.masks, exp.which)[0] == second
  assert [row["epoch"] for row in rec["curve"]] == [1, 2, 3, 4, 5, 6]   # one run, no reset
  # The first event pruned the weights of smallest magnitude after epoch 2 of the very same run.
  trainer = exp.trainer(6)
  replay = trainer.init_state(exp.init_params, {}, masks.init(exp.init_params), exp.key("dynamic@0.3"))
  replay, _ = fit(trainer, replay, exp.data, 2)
  m1 = pruning.magnitude(replay.params, replay.masks, 0.17, which=exp.which)
  assert all(bool(jnp.all(b <= a)) for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(state.masks)))


def test_compare_shares_one_dense_run_and_covers_every_method():
  exp = experiment.build(small_config(**{"compare.sparsities": (0.5, 0.8), "iterative.rounds": 2}))
  out = Collect()
  run_method(exp, out)
  seen = [(r["method"], round(r["sparsity"], 1)) for r in out.records]
  assert seen.count(("dense", 0.0)) == 1
  for m in ("oneshot", "oneshot_reinit", "oneshot_random", "dynamic"):
    assert (m, 0.5) in seen and (m, 0.8) in seen
  assert [r["round"] for r in out.records if r["method"] == "iterative"] == [1, 2]


def test_same_config_same_numbers():
  a, b = Collect(), Collect()
  run_method(experiment.build(small_config(method="oneshot_reinit")), a)
  run_method(experiment.build(small_config(method="oneshot_reinit")), b)
  strip = lambda r: {k: v for k, v in r.items() if k != "wall_time_s"}
  assert [strip(r) for r in a.records] == [strip(r) for r in b.records]


def test_vmapped_sweep_matches_training_one_after_another():
  """config.train.vmap trains a one-shot sweep's tickets in one program: same numbers, float tolerance."""
  results = {}
  for vmap in (False, True):
    exp = experiment.build(small_config(**{"train.vmap": vmap, "method": "oneshot_reinit",
                                           "compare.sparsities": (0.5, 0.8, 0.9)}))
    out = Collect()
    dense = drive(common.dense(exp, out))
    drive(lottery.oneshot_sweep(exp, dense, (0.5, 0.8, 0.9), out, "rewind"))
    results[vmap] = out
  for a, b, sa, sb in zip(results[False].records, results[True].records, results[False].states,
                          results[True].states):
    assert a["sparsity"] == b["sparsity"] and a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.01)
    assert [r["train_loss"] for r in a["curve"]] == pytest.approx([r["train_loss"] for r in b["curve"]], abs=1e-4)
    assert leaves_equal(sa.masks, sb.masks)
    for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
      np.testing.assert_allclose(x, y, atol=1e-4)


def test_vmapped_compare_trains_reinit_and_random_tickets_in_one_program(monkeypatch):
  """compare's oneshot_reinit and oneshot_random share a schedule: with train.vmap, one fit of all
  their tickets, and the same records (in the same order) as training them one after another."""
  calls = []
  fit_states = trainer_lib.Trainer.fit
  monkeypatch.setattr(trainer_lib.Trainer, "fit", lambda self, states, *a, **k: calls.append(len(states))
                      or fit_states(self, states, *a, **k))
  results = {}
  for vmap in (False, True):
    out = Collect()
    run_method(experiment.build(small_config(**{
        "train.vmap": vmap, "method": "compare", "compare.methods": ("oneshot", "oneshot_reinit", "oneshot_random"),
        "compare.sparsities": (0.5, 0.8)})), out)
    results[vmap] = out
  # Without vmap every job alone (the dense run's two segments, then 6 tickets); with it the dense run's
  # two segments, then oneshot (fine-tuning, its own schedule) as a group of its own and reinit and random
  # as one group of four.
  assert calls == [1] * 8 + [1, 1, 2, 4]
  a, b = results[False], results[True]
  assert [(r["method"], r["sparsity"]) for r in a.records] == [(r["method"], r["sparsity"]) for r in b.records]
  assert [r["method"] for r in a.records] == ["dense"] + ["oneshot"] * 2 + ["oneshot_reinit"] * 2 + \
      ["oneshot_random"] * 2
  for ra, rb, sa, sb in zip(a.records[1:], b.records[1:], a.states[1:], b.states[1:]):
    assert leaves_equal(sa.masks, sb.masks)
    assert [r["train_loss"] for r in ra["curve"]] == pytest.approx([r["train_loss"] for r in rb["curve"]], abs=1e-4)
    for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
      np.testing.assert_allclose(x, y, atol=1e-4)
