"""The instability method: copies from the dense run's step-k weights, the path between them, its barrier."""

import jax
import numpy as np
import pytest

from lth_jax import experiment
from lth_jax.errors import UserError
from lth_jax.methods import stability
from lth_jax.sparsity import masks as masks_lib
from tests.helpers import Collect, leaves_equal, run_method, small_config


def test_instability_records_a_path_per_network_and_rewind_step():
  exp = experiment.build(small_config(**{"method": "instability", "stability.rewind_steps": (0, 5),
                                         "stability.points": 5, "train.epochs": 2}))
  out = Collect()
  run_method(exp, out)
  runs = out.records[1:]
  assert [(r["network"], r["rewind_step"]) for r in runs] == [("dense", 0), ("ticket", 0), ("dense", 5), ("ticket", 5)]
  trainer = exp.trainer(2)
  for r, state in zip(runs, out.states[1:]):
    assert len(r["error_curve"]) == 5 and r["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # the path's first end is the recorded copy itself
    assert r["error_curve"][0] == pytest.approx(1.0 - trainer.evaluate(state, exp.data["test"])["accuracy"])
    assert r["error_barrier"] == pytest.approx(max(r["error_curve"]) - (r["error_curve"][0] + r["error_curve"][-1]) / 2)
  assert leaves_equal(out.rewinds[1], exp.init_params)   # k = 0: theta_0
  ticket = out.states[2]
  remaining, total = masks_lib.count(ticket.masks, exp.which)
  assert remaining == total - round(0.8 * total)


def test_the_two_copies_differ_only_by_their_data_order():
  exp = experiment.build(small_config(**{"method": "instability", "stability.rewind_steps": (0,),
                                         "stability.points": 3, "train.epochs": 2}))
  out = Collect()
  run_method(exp, out)
  curve = out.records[1]["error_curve"]
  assert len(curve) == 3 and all(0.0 <= e <= 1.0 for e in curve)
  assert out.records[1]["copy_test_errors"] == [curve[0], curve[-1]]


def test_batch_norm_statistics_are_the_batch_statistics():
  import flax.linen as nn
  import jax.numpy as jnp

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.Dense(3)(x)
      return nn.BatchNorm(use_running_average=not train, momentum=0.7)(x)

  exp = experiment.build(small_config())
  exp.model = Net()
  variables = exp.model.init(jax.random.key(0), exp.data["train"][0][:2])
  exp.trainers.clear()
  stats = stability.recomputed_stats(exp, variables["params"], variables["batch_stats"])
  h = np.asarray(exp.data["train"][0][:1000] @ variables["params"]["Dense_0"]["kernel"] + variables["params"]["Dense_0"]["bias"])
  np.testing.assert_allclose(np.asarray(stats["BatchNorm_0"]["mean"]), h.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(stats["BatchNorm_0"]["var"]), h.var(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides,message", [
    ({"stability.rewind_steps": (5, 0)}, "must be increasing iteration counts"),
    ({"stability.points": 1}, r"config.stability.points=1 must be >= 2"),
])
def test_bad_stability_values_are_refused(overrides, message):
  with pytest.raises(UserError, match=message):
    experiment.validate(small_config(**overrides))


def test_report_labels_and_instability_section(tmp_path):
  from lth_jax import report_sanity
  assert report_sanity.label({"method": "prune_at_init", "criterion": "snip", "control": "shuffle"}) == \
      "prune_at_init snip +shuffle"
  assert report_sanity.label({"method": "iterative", "control": "none"}) == "iterative"
  run = {"method": "instability", "network": "dense", "rewind_step": 5, "sparsity": 0.0, "alphas": [0.0, 0.5, 1.0],
         "error_curve": [0.1, 0.4, 0.2], "error_barrier": 0.25, "copy_test_errors": [0.1, 0.2]}
  (tmp_path / "results.md").write_text("# runs\n")
  report_sanity.write(str(tmp_path), [{"method": "dense"}, run])
  text = (tmp_path / "results.md").read_text()
  assert "| 0 | dense | 5 | 0.000 | 0.1000 / 0.2000 | 0.4000 | +0.2500 |" in text
  assert (tmp_path / "instability_paths.png").exists() and (tmp_path / "instability_barrier.png").exists()


def test_imp_subnetworks_are_found_per_rewind_step_and_analysed_at_the_listed_rounds():
  exp = experiment.build(small_config(**{"method": "instability", "stability.rewind_steps": (0, 5),
                                         "stability.points": 3, "train.epochs": 2, "stability.imp_rounds": (1, 3),
                                         "iterative.rate": 0.5}))
  out = Collect()
  run_method(exp, out)
  runs = out.records[1:]
  assert [(r["network"], r["rewind_step"], r.get("imp_round")) for r in runs] == [
      ("dense", 0, None), ("ticket", 0, 1), ("ticket", 0, 3), ("dense", 5, None), ("ticket", 5, 1), ("ticket", 5, 3)]
  keys = [(r["network"], r["rewind_step"], r.get("imp_round")) for r in runs]
  states, records = dict(zip(keys, out.states[1:])), dict(zip(keys, runs))
  _, total = masks_lib.count(out.states[0].masks, exp.which)
  kept = {key: masks_lib.count(s.masks, exp.which)[0] for key, s in states.items()}
  assert kept[("ticket", 0, 1)] == kept[("ticket", 5, 1)] == total - round(0.5 * total)   # round 1: the dense weights pruned
  assert kept[("ticket", 0, 3)] == kept[("ticket", 5, 3)] < total // 8 + 3   # rate 0.5 compounds over three rounds
  for k in (0, 5):   # each k's lineage is its own, and its masks nest
    inner, outer = states[("ticket", k, 3)].masks, states[("ticket", k, 1)].masks
    assert all(np.all(np.asarray(o) >= np.asarray(i)) for i, o in zip(jax.tree.leaves(inner), jax.tree.leaves(outer)))
    assert records[("ticket", k, 1)]["sparsity"] == pytest.approx(0.5, abs=0.01) and records[("ticket", k, 3)]["sparsity"] > 0.85
  # the first round's mask is the one-shot ticket's at the same sparsity (same weights, same criterion)
  oneshot = Collect()
  run_method(experiment.build(small_config(**{"method": "instability", "stability.rewind_steps": (0,),
                                              "stability.points": 3, "train.epochs": 2, "prune.sparsity": 0.5})), oneshot)
  assert leaves_equal(oneshot.states[2].masks, states[("ticket", 0, 1)].masks)


def test_imp_rounds_need_a_rate():
  with pytest.raises(UserError, match="config.iterative.rate"):
    experiment.validate(small_config(**{"method": "instability", "stability.imp_rounds": (2,)}))
  with pytest.raises(UserError, match="increasing IMP rounds"):
    experiment.validate(small_config(**{"stability.imp_rounds": (3, 2), "iterative.rate": 0.2}))
