"""Training lengths and evaluations in iterations (train.steps, train.eval_every_steps, train.best_by), and the
aggregate of a study over per-seed workdirs (python -m lth_jax.report aggregate)."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from lth_jax import aggregate, evaluation, experiment
from tests.helpers import Collect, ENV, ROOT, run_method, small_config

STEPS, EVERY = 21, 5   # moons: 280 training examples at batch 32 -> 8 steps per epoch; 21 ends inside epoch 3


def _row(epoch, evals):
  return {"epoch": epoch, "val_loss": None, "val_accuracy": None, "test_loss": None, "test_accuracy": None,
          "evals": [{"step": s, "val_loss": vl, "val_accuracy": va, "test_loss": None, "test_accuracy": ta}
                    for s, vl, va, ta in evals]}


def test_best_evaluation_by_loss_and_accuracy_earliest_on_ties():
  history = [_row(1, [(4, 0.9, 0.70, 0.71), (8, 0.5, 0.80, 0.81)]),
             _row(2, [(12, 0.5, 0.85, 0.86), (16, 0.6, 0.85, 0.90)])]
  by_loss = evaluation.best_evaluation(history, "val_loss", steps_per_epoch=10)
  assert (by_loss["step"], by_loss["epoch"], by_loss["test_accuracy"]) == (8, 1, 0.81)   # 0.5 first at step 8
  by_acc = evaluation.best_evaluation(history, "val_accuracy", steps_per_epoch=10)
  assert (by_acc["step"], by_acc["epoch"], by_acc["test_accuracy"]) == (12, 2, 0.86)   # 0.85 first at step 12
  epochs = [{"epoch": e, "val_loss": l, "val_accuracy": a, "test_loss": None, "test_accuracy": t}
            for e, l, a, t in [(1, 0.4, 0.9, 0.5), (2, 0.3, None, 0.6), (3, None, None, None)]]
  assert evaluation.best_evaluation(epochs, "val_loss", 7)["step"] == 14   # epoch rows: evaluated at the end
  assert evaluation.best_evaluation(epochs[2:], "val_loss", 7) is None


def _run(tmp_path, name, **overrides):
  config = small_config(**{"train.steps": STEPS, "train.eval_every_steps": EVERY, "train.best_by": "val_loss",
                           "method": "dense", "optimizer.name": "adam", "optimizer.lr": 0.01,
                           "workdir": str(tmp_path / name), **overrides})
  exp = experiment.build(config)
  collect = Collect()
  run_method(exp, collect)
  return exp, collect


def test_steps_train_exactly_that_many_iterations_and_evaluate_every_k(tmp_path):
  exp, collect = _run(tmp_path, "always")
  spe = exp.steps_per_epoch
  assert spe == 8 and exp.config.train.epochs == 3   # ceil(21 / 8)
  state, record = collect.states[0], collect.records[0]
  assert int(state.step) == STEPS
  # optax counted exactly that many updates: Adam's own count, and the schedule's (set to the global step)
  counts = [s for s in jax.tree.leaves(state.opt_state) if np.asarray(s).dtype == np.int32]
  assert [int(c) for c in counts] == [STEPS, STEPS]
  evals = [e for row in record["curve"] for e in row["evals"]]
  assert [e["step"] for e in evals] == [5, 10, 15, 20, 21]   # multiples of 5, then the last step
  assert all(e["test_accuracy"] is not None for e in evals)
  losses = [e["val_loss"] for e in evals]
  best = int(np.argmin(losses))   # numpy's argmin: the first of equal minima
  assert record["best_step"] == evals[best]["step"]
  assert record["best_epoch"] == -(-evals[best]["step"] // spe)
  assert record["test_accuracy_at_best_epoch"] == evals[best]["test_accuracy"]
  assert record["best_val_loss"] == losses[best]
  # evaluating changes nothing about training: the weights equal those of a run evaluated only at the end
  _, quiet = _run(tmp_path, "quiet", **{"train.eval_every_steps": 0})
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(quiet.states[0].params)))


def test_test_split_only_where_validation_improves(tmp_path):
  _, always = _run(tmp_path, "always")
  _, lazy = _run(tmp_path, "lazy", **{"train.test_at_best_only": True})
  full = [e for row in always.records[0]["curve"] for e in row["evals"]]
  part = [e for row in lazy.records[0]["curve"] for e in row["evals"]]
  running_min, expected = np.inf, []
  for i, e in enumerate(full):   # the test split is due where the loss reaches a new minimum, and at the end
    expected.append(e["val_loss"] < running_min or i == len(full) - 1)
    running_min = min(running_min, e["val_loss"])
  assert [e["test_accuracy"] is not None for e in part] == expected
  assert [e["val_loss"] for e in part] == [e["val_loss"] for e in full]
  assert lazy.records[0]["test_accuracy_at_best_epoch"] == always.records[0]["test_accuracy_at_best_epoch"]


def _doc(seed, runs, complete=True):
  return {"complete": complete, "runs": [{"method": m, "round": r, "sparsity": s, "seed": seed,
                                          "test_accuracy_at_best_epoch": a, "best_step": b, "wall_time_s": 1800.0}
                                         for m, r, s, a, b in runs]}


def test_aggregate_matches_runs_across_seeds(tmp_path):
  docs = {"seed0": _doc(0, [("dense", 0, 0.0, 0.97, 5000), ("iterative", 1, 0.2, 0.98, 4000)]),
          "seed1": _doc(1, [("dense", 0, 0.0, 0.95, 7000), ("iterative", 1, 0.2, 0.99, 3000)]),
          "seed2": _doc(2, [("dense", 0, 0.0, 0.10, 100)], complete=False)}
  for name, doc in docs.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "results.json").write_text(json.dumps(doc))
  (tmp_path / "study").mkdir()
  (tmp_path / "study" / "paper.json").write_text(json.dumps({"source": "F&C 2019", "series": [
      {"label": "paper", "where": "Figure 3", "field": "best_step", "points": [[100, 4000], [20, 3000]]}],
      "claims": [{"claim": '"tickets learn faster"', "where": "Abstract"}]}))
  result = subprocess.run([sys.executable, "-m", "lth_jax.report", "aggregate", *(str(tmp_path / n) for n in docs),
                           "--out", str(tmp_path / "study")], cwd=ROOT, env=ENV, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  rows = json.loads((tmp_path / "study" / "aggregate.json").read_text())["rows"]
  assert [(r["method"], r["n"]) for r in rows] == [("dense", 2), ("iterative", 2)]   # seed2 is not complete
  assert rows[0]["test_accuracy_at_best_epoch"]["mean"] == pytest.approx(0.96)
  assert (rows[1]["best_step"]["min"], rows[1]["best_step"]["max"], rows[1]["best_step"]["mean"]) == (3000, 4000, 3500)
  text = (tmp_path / "study" / "aggregate.md").read_text()
  assert "not complete" in text and "2.00 h" in text   # four runs of 1800 s
  assert "## The paper: F&C 2019" in text and "- paper (Figure 3; best_step): 100: 4000, 20: 3000" in text
  assert '- "tickets learn faster" (Abstract)' in text
  assert (tmp_path / "study" / "early_stop_iteration.png").stat().st_size > 0
  usage = subprocess.run([sys.executable, "-m", "lth_jax.report", "aggregate", str(tmp_path / "seed0")], cwd=ROOT,
                         env=ENV, capture_output=True, text=True)
  assert usage.returncode == 2 and usage.stderr.count("\n") == 1


def test_aggregate_time_is_the_workdirs_own_wall_time_where_every_one_records_it(tmp_path):
  """A vmapped pair's two runs each span the pair's time: the workdir's own wall time counts it once."""
  for name, wall in (("a", 3600.0), ("b", 1800.0)):
    (tmp_path / name).mkdir()
    doc = _doc(int(name == "b"), [("iterative", 1, 0.2, 0.98, 4000), ("iterative_random", 1, 0.2, 0.97, 5000)])
    (tmp_path / name / "results.json").write_text(json.dumps({**doc, "wall_time_s": wall}))
  aggregate.aggregate([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "both"))
  assert "Time: 1.50 h, the workdirs' wall times summed." in (tmp_path / "both" / "aggregate.md").read_text()
  (tmp_path / "b" / "results.json").write_text(json.dumps(_doc(1, [("iterative", 1, 0.2, 0.98, 4000)])))
  aggregate.aggregate([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "older"))
  assert "Time: 1.50 h, summed over every run's wall time (not every workdir" in (
      tmp_path / "older" / "aggregate.md").read_text()   # three runs of 1800 s


def test_aggregate_refuses_when_nothing_is_complete(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "results.json").write_text(json.dumps(_doc(0, [], complete=False)))
  with pytest.raises(ValueError, match="no complete results.json"):
    aggregate.aggregate([str(tmp_path / "a")], str(tmp_path / "out"))


def test_aggregate_counts_a_run_once_per_seed_and_names_networks_and_distributions(tmp_path):
  pieces = {"seed0/erk": [("dense", 0, 0.0, {}), ("rigl", 1, 0.9, {"distribution": "erk"})],
            "seed0/uniform": [("dense", 0, 0.0, {}), ("rigl", 1, 0.9, {"distribution": "uniform_first_dense"})],
            "seed1/k0": [("dense", 0, 0.0, {}), ("instability", 0, 0.0, {"network": "dense", "rewind_step": 0,
                                                                           "error_barrier": 0.01})],
            "seed1/k100": [("dense", 0, 0.0, {}), ("instability", 100, 0.0, {"network": "dense", "rewind_step": 100,
                                                                               "error_barrier": 0.03}),
                           ("instability", 100, 0.9, {"network": "ticket", "rewind_step": 100, "error_barrier": 0.0})]}
  for piece, runs in pieces.items():
    (tmp_path / piece).mkdir(parents=True)
    seed = int(piece[4])
    doc = {"complete": True, "config": {"seed": seed}, "runs": [
        {"method": m, "round": r, "sparsity": s, "seed": seed, "test_accuracy": 0.9, "wall_time_s": 10.0, **extra}
        for m, r, s, extra in runs]}
    (tmp_path / piece / "results.json").write_text(json.dumps(doc))
  rows = aggregate.aggregate([str(tmp_path / p) for p in pieces], str(tmp_path / "study"))
  assert [(r["method"], r["rewind_step"], r["n"]) for r in rows] == [
      ("dense", None, 2), ("rigl [erk]", None, 1), ("rigl [uniform_first_dense]", None, 1),
      ("instability dense", 0, 1), ("instability dense", 100, 1), ("instability ticket", 100, 1)]
  assert rows[4]["error_barrier"]["mean"] == 0.03
  text = (tmp_path / "study" / "aggregate.md").read_text()
  assert "error barrier" in text and "# Aggregate over 2 seeds (4 workdirs)" in text
  assert (tmp_path / "study" / "instability_barrier.png").stat().st_size > 0
