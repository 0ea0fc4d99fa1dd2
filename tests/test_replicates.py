"""Replicate runs (config.replicates): seeds one after another, or in lockstep as one vmapped program."""

import json
import os

import jax
import numpy as np
import pytest

from lth_jax import cli, experiment, methods, report
from lth_jax.errors import UserError
from lth_jax.methods import common
from lth_jax.training import trainer as trainer_lib
from tests.helpers import Collect, leaves_equal, run_method, small_config

COMPARE = {"method": "compare", "compare.methods": ("oneshot_reinit", "oneshot_random"),
           "compare.sparsities": (0.5, 0.8), "train.epochs": 3}


def run_replicates(n, vmap, **overrides):
  exp = experiment.build(small_config(**{**COMPARE, "train.vmap": vmap, "replicates": n, **overrides}))
  outs = [Collect() for _ in range(n)]
  methods.run([exp.replicate(i) for i in range(n)], outs)
  return exp, outs


@pytest.fixture(scope="module")
def sequential():
  return run_replicates(2, vmap=False)


def test_a_replicate_has_its_own_init_and_keys_and_shares_the_data():
  exp = experiment.build(small_config())
  other = exp.replicate(1)
  assert other.seed == exp.config.seed + 1 and other.data is exp.data and exp.replicate(0) is exp
  assert not leaves_equal(other.init_params, exp.init_params)
  assert not np.array_equal(jax.random.key_data(other.key("dense")), jax.random.key_data(exp.key("dense")))
  # the same trainer (one compiled program for every seed), the same held-out sets, its own dense reference
  assert other.trainer(4) is exp.trainer(4)
  assert other.evaluator.perturbed is exp.evaluator.perturbed and other.evaluator.exp is other


def test_replicate_zero_is_the_plain_run(sequential):
  _, outs = sequential
  plain = Collect()
  run_method(experiment.build(small_config(**COMPARE)), plain)
  strip = lambda r: {k: v for k, v in r.items() if k != "wall_time_s"}
  assert [strip(r) for r in outs[0].records] == [strip(r) for r in plain.records]
  assert outs[1].records[0]["test_accuracy"] != pytest.approx(outs[0].records[0]["test_accuracy"], abs=0) or \
      outs[1].records[0]["curve"] != outs[0].records[0]["curve"]


def test_lockstep_trains_the_seeds_in_one_program_with_the_same_numbers(sequential, monkeypatch):
  calls = []
  fit = trainer_lib.Trainer.fit
  monkeypatch.setattr(trainer_lib.Trainer, "fit", lambda self, states, data, end, names, *a: calls.append(list(names))
                      or fit(self, states, data, end, names, *a))
  _, vmapped = run_replicates(2, vmap=True)
  # the two dense runs together (up to the rewind epoch, 0 here, then on), then all eight tickets
  # (2 seeds x reinit/random x 2 sparsities)
  assert [len(c) for c in calls] == [2, 2, 8]
  assert calls[0] == calls[1] == ["seed0/dense", "seed1/dense"]
  _, seq = sequential
  for a, b in zip(seq, vmapped):
    assert [(r["method"], r["sparsity"]) for r in a.records] == [(r["method"], r["sparsity"]) for r in b.records]
    for ra, rb, sa, sb in zip(a.records, b.records, a.states, b.states):
      assert leaves_equal(sa.masks, sb.masks)
      assert [r["train_loss"] for r in ra["curve"]] == pytest.approx([r["train_loss"] for r in rb["curve"]],
                                                                     abs=1e-4)
      for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
        np.testing.assert_allclose(x, y, atol=1e-4)


def test_a_failing_replicate_stops_the_lockstep(monkeypatch):
  dense, started = common.dense, []

  def fail_on_seed_1(exp, recorder):
    started.append(exp.seed)
    if exp.seed == 1:
      raise UserError("seed 1 failed")
    return (yield from dense(exp, recorder))
  monkeypatch.setattr(common, "dense", fail_on_seed_1)
  with pytest.raises(UserError, match="seed 1 failed"):
    run_replicates(3, vmap=True)
  assert started == [0, 1]   # seed 2 never started: nothing trains after a failure


def test_the_command_line_records_every_seed_and_resumes(tmp_path):
  config = small_config(**{**COMPARE, "compare.methods": ("oneshot_reinit",), "replicates": 2,
                           "train.vmap": True, "workdir": str(tmp_path)})
  runs = cli.run(config)
  doc = json.load(open(tmp_path / "results.json"))
  assert doc["complete"] and [r["seed"] for r in doc["runs"]] == [0, 0, 0, 1, 1, 1]
  assert len({r["ticket"] for r in runs}) == 6 and all(os.path.isdir(tmp_path / r["ticket"]) for r in runs)
  rows = doc["summary"]["replicates"]
  assert [(r["method"], r["n"]) for r in rows] == [("dense", 2), ("oneshot_reinit", 2), ("oneshot_reinit", 2)]
  accuracies = [runs[1]["test_accuracy"], runs[4]["test_accuracy"]]
  assert rows[1]["test_accuracy_mean"] == pytest.approx(np.mean(accuracies))
  assert rows[1]["test_accuracy_std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / np.sqrt(2))
  assert "## Replicates (2 seeds)" in open(tmp_path / "results.md").read()
  # the same command again: every segment of both seeds comes back from its own checkpoints
  again = cli.run(config)
  strip = lambda r: {k: v for k, v in r.items() if k != "wall_time_s"}
  assert [strip(r) for r in again] == [strip(r) for r in runs]


def test_replicate_summary_by_hand():
  runs = [{"seed": s, "method": m, "round": 1, "sparsity": 0.5, "test_accuracy": acc, "ece": 0.1}
          for s, (m, acc) in [(0, ("oneshot", 0.9)), (1, ("oneshot", 0.8)), (2, ("oneshot", 0.7))]]
  (row,) = report.replicate_summary(runs)
  assert row["n"] == 3 and row["seeds"] == [0, 1, 2]
  assert row["test_accuracy_mean"] == pytest.approx(0.8) and row["test_accuracy_std"] == pytest.approx(0.1)
  assert row["ece_std"] == pytest.approx(0.0) and row["best_epoch_mean"] is None


def test_replicates_must_be_positive():
  with pytest.raises(UserError, match="config.replicates=0"):
    experiment.build(small_config(replicates=0))
