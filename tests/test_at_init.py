"""prune_at_init, the sanity-check controls (shuffle / reinit / invert) and per-layer counts in every record."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import experiment
from lth_jax.errors import UserError
from lth_jax.methods import common
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity import pruning
from tests.helpers import Collect, drive, leaves_equal, oneshot, run_method, small_config


def per_layer(m, which):
  return {name: c["remaining"] for name, c in masks_lib.layer_counts(m, which).items()}


def test_shuffle_keeps_every_layer_count_and_moves_positions():
  rng = np.random.default_rng(0)
  m = {"a": {"kernel": jnp.asarray(rng.random((20, 30)) < 0.3, jnp.float32), "bias": jnp.zeros(30)},
       "b": {"kernel": jnp.asarray(rng.random((30, 5)) < 0.6, jnp.float32), "bias": jnp.ones(5)}}
  which = masks_lib.prunable(m)
  shuffled = masks_lib.shuffle(jax.random.key(1), m, which)
  assert per_layer(shuffled, which) == per_layer(m, which)
  assert masks_lib.hamming(m, shuffled, which) > 0.2
  assert leaves_equal(shuffled["a"]["bias"], m["a"]["bias"]) and leaves_equal(shuffled["b"]["bias"], m["b"]["bias"])
  assert set(np.unique(np.asarray(shuffled["a"]["kernel"]))) <= {0.0, 1.0}


def test_prune_at_init_prunes_theta0_by_its_criterion_and_trains_from_it():
  exp = experiment.build(small_config(**{"method": "prune_at_init", "prune.criterion": "snip", "prune.sparsity": 0.8}))
  out = Collect()
  run_method(exp, out)
  rec, state = out.records[0], out.states[0]
  context = common.criterion_context(exp, "prune_at_init@0.8")
  expected = pruning.prune("snip", exp.init_params, masks_lib.init(exp.init_params), 0.8, which=exp.which,
                           context=context)
  assert leaves_equal(state.masks, expected)
  assert leaves_equal(out.rewinds[0], exp.init_params)
  assert rec["method"] == "prune_at_init" and rec["criterion"] == "snip" and rec["control"] == "none"
  assert rec["accuracy_drop"] is None and rec["epochs_trained"] == exp.config.train.epochs
  remaining, total = masks_lib.count(state.masks, exp.which)
  assert remaining == total - round(0.8 * total)
  # layer_sparsity: every prunable leaf by name, exact counts summing to the global ones
  assert set(rec["layer_sparsity"]) == {"hidden_0/kernel", "hidden_1/kernel", "output/kernel"}
  assert sum(c["remaining"] for c in rec["layer_sparsity"].values()) == remaining
  assert sum(c["total"] for c in rec["layer_sparsity"].values()) == total
  assert rec["layer_sparsity"]["hidden_0/kernel"]["total"] == 2 * 16


@pytest.mark.parametrize("criterion", ["grasp", "synflow", "magnitude", "random"])
def test_prune_at_init_reaches_the_exact_count_with_every_criterion(criterion):
  exp = experiment.build(small_config(**{"method": "prune_at_init", "prune.criterion": criterion,
                                         "prune.sparsity": 0.9, "prune.synflow_iterations": 10, "train.epochs": 1}))
  out = Collect()
  run_method(exp, out)
  remaining, total = masks_lib.count(out.states[0].masks, exp.which)
  assert remaining == total - round(0.9 * total)
  assert out.records[0]["criterion"] == criterion


def test_invert_keeps_the_counts_and_the_lowest_scores():
  exp = experiment.build(small_config(**{"method": "prune_at_init", "prune.control": "invert",
                                         "prune.sparsity": 0.7, "prune.scope": "layerwise"}))
  out = Collect()
  run_method(exp, out)
  inverted = out.states[0].masks
  normal = pruning.magnitude(exp.init_params, masks_lib.init(exp.init_params), 0.7, "layerwise", exp.which)
  assert per_layer(inverted, exp.which) == per_layer(normal, exp.which)
  for name, w in masks_lib.named_leaves(exp.init_params):
    if name.endswith("kernel"):
      kept = np.asarray(dict(masks_lib.named_leaves(inverted))[name]).ravel() == 1
      mag = np.abs(np.asarray(w)).ravel()
      assert mag[kept].max() <= mag[~kept].min()   # the complement ordering: the smallest are kept
  assert out.records[0]["control"] == "invert"


def test_shuffle_control_on_a_lottery_ticket_keeps_layer_counts():
  exp = experiment.build(small_config())
  out = Collect()
  dense = drive(common.dense(exp, out))
  plain = oneshot(exp, dense, 0.8, out, reset="rewind")
  exp_s = experiment.build(small_config(**{"prune.control": "shuffle"}))
  shuffled = oneshot(exp_s, dense, 0.8, out, reset="rewind")
  assert per_layer(shuffled.masks, exp.which) == per_layer(plain.masks, exp.which)
  assert masks_lib.hamming(shuffled.masks, plain.masks, exp.which) > 0
  assert out.records[-1]["control"] == "shuffle" and out.records[-2]["control"] == "none"
  assert leaves_equal(out.rewinds[-1], exp.init_params)


def test_reinit_control_trains_the_same_mask_from_fresh_weights():
  exp = experiment.build(small_config(**{"method": "prune_at_init", "prune.control": "reinit"}))
  out = Collect()
  run_method(exp, out)
  plain = experiment.build(small_config(**{"method": "prune_at_init"}))
  expected = pruning.magnitude(plain.init_params, masks_lib.init(plain.init_params), 0.8, which=plain.which)
  assert leaves_equal(out.states[0].masks, expected)
  fresh, _ = exp.init_variables(exp.key("reinit/prune_at_init@0.8"))
  assert leaves_equal(out.rewinds[0], fresh) and not leaves_equal(fresh, exp.init_params)
  assert out.records[0]["control"] == "reinit"


def test_compare_runs_prune_at_init_beside_the_lottery_methods():
  exp = experiment.build(small_config(**{"compare.methods": ("oneshot_reinit", "prune_at_init"),
                                         "compare.sparsities": (0.5, 0.8)}))
  out = Collect()
  run_method(exp, out)
  assert [r["method"] for r in out.records] == ["dense"] + ["oneshot_reinit"] * 2 + ["prune_at_init"] * 2
  assert all("layer_sparsity" in r for r in out.records)
  assert out.records[-1]["accuracy_drop"] == pytest.approx(out.records[0]["test_accuracy"] - out.records[-1]["test_accuracy"])


@pytest.mark.parametrize("overrides,message", [
    ({"prune.control": "flip"}, "config.prune.control='flip'; allowed: none, shuffle, reinit, invert"),
    ({"prune.synflow_iterations": 0}, "config.prune.synflow_iterations=0 must be >= 1"),
    ({"at_init.rounds": 0}, "config.at_init.rounds=0 must be >= 1"),
    ({"method": "dynamic", "prune.control": "reinit"}, "cannot apply to the dynamic method"),
])
def test_bad_values_are_refused_naming_the_key(overrides, message):
  with pytest.raises(UserError, match=message.replace("(", r"\(")):
    experiment.validate(small_config(**overrides))


def test_imp_round_controls_train_beside_the_ticket_and_leave_its_lineage_alone():
  settings = {"method": "iterative", "iterative.rounds": 3, "iterative.rate": 0.5, "prune.scope": "layerwise",
              "train.epochs": 2}
  out = Collect()
  exp = experiment.build(small_config(**settings, **{"iterative.controls": ("reinit", "shuffle", "invert"),
                                                     "iterative.control_rounds": (2, 3)}))
  run_method(exp, out)
  labels = [(r["method"], r["round"], r["control"]) for r in out.records[1:]]
  assert labels == [("iterative", 1, "none")] + [(("iterative", r, c)) for r in (2, 3)
                                                  for c in ("none", "reinit", "shuffle", "invert")]
  plain = Collect()
  run_method(experiment.build(small_config(**settings)), plain)
  tickets = [i for i, (_, _, c) in enumerate(labels, start=1) if c == "none"]
  for i, j in zip(tickets, range(1, 4)):   # the ticket's lineage is the run without controls
    assert leaves_equal(out.states[i].masks, plain.states[j].masks)
    assert out.records[i]["test_accuracy"] == plain.records[j]["test_accuracy"]
  for round_, base in ((2, 2), (3, 6)):
    ticket, reinit, shuffle, invert = (out.states[base + k] for k in range(4))
    previous = out.states[base - 4 if round_ == 3 else 1].masks
    assert leaves_equal(reinit.masks, ticket.masks) and not leaves_equal(out.rewinds[base + 1], exp.init_params)
    assert per_layer(shuffle.masks, exp.which) == per_layer(ticket.masks, exp.which)
    assert masks_lib.hamming(shuffle.masks, ticket.masks, exp.which) > 0
    assert leaves_equal(out.rewinds[base + 2], exp.init_params) and leaves_equal(out.rewinds[base + 3], exp.init_params)
    # invert: of the previous round's survivors, the lowest-magnitude half stays: what the ticket removed is kept
    assert per_layer(invert.masks, exp.which) == per_layer(ticket.masks, exp.which)
    for p, t, v in zip(*(jax.tree.leaves(m) for m in (previous, ticket.masks, invert.masks))):
      p, t, v = (np.asarray(a) for a in (p, t, v))
      assert np.all(v <= p) and np.all(v >= p - t)


def test_imp_round_controls_are_checked():
  for overrides, message in (({"iterative.controls": ("flip",)}, "config.iterative.controls"),
                             ({"iterative.controls": ("shuffle",), "prune.control": "shuffle"}, "lineage"),
                             ({"iterative.control_rounds": (9,), "iterative.rounds": 3}, "rounds in 1..3")):
    with pytest.raises(UserError, match=message):
      experiment.validate(small_config(**{"method": "iterative", **overrides}))
