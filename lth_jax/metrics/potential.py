"""Prune potential and excess error from a sparsity sweep (Liebenwein et al., "Lost in Pruning", 2021).

Distributions: "nominal" (the test split, `test_accuracy`), every corruption averaged over its
severities, "corruptions" (the mean over all corruptions and severities), and every labelled shifted
set of `config.metrics.shifted`.

* prune potential of a method on a distribution: the largest sparsity among that method's runs whose
  error is at most the dense network's error on the same distribution plus `delta` (0 when none is).
* excess error of a run on a shifted distribution d:
  (err_pruned(d) - err_dense(d)) - (err_pruned(nominal) - err_dense(nominal)),
  the extra error pruning costs on d beyond what it costs on the nominal test data.
"""

import numpy as np


def accuracies(run: dict) -> dict[str, float]:
  """Accuracy of one run on each distribution it was evaluated on."""
  acc = {"nominal": run["test_accuracy"]}
  for name, by_severity in (run.get("corruptions") or {}).items():
    acc[name] = float(np.mean([cell["accuracy"] for cell in by_severity.values()]))
  if "corruption_accuracy" in run:
    acc["corruptions"] = run["corruption_accuracy"]
  for name, figures in (run.get("shifted") or {}).items():
    acc[name] = figures["accuracy"]
  return acc


def prune_potential(runs: list[dict], delta: float) -> dict[str, dict[str, float]]:
  """{method: {distribution: prune potential}} for every pruned method in `runs`."""
  dense = next((r for r in runs if r["method"] == "dense"), None)
  if dense is None:
    return {}
  dense_acc = accuracies(dense)
  out = {}
  for method in dict.fromkeys(r["method"] for r in runs if r["method"] != "dense"):
    mine = [r for r in runs if r["method"] == method]
    out[method] = {
        d: max([0.0] + [r["sparsity"] for r in mine if (1 - accuracies(r)[d]) <= (1 - dense_acc[d]) + delta])
        for d in dense_acc}
  return out


def excess_error(run: dict, dense: dict) -> dict[str, float]:
  """{shifted distribution: excess error} of one run against the dense run."""
  acc, ref = accuracies(run), accuracies(dense)
  nominal_gap = ref["nominal"] - acc["nominal"]
  return {d: (ref[d] - acc[d]) - nominal_gap for d in acc if d != "nominal"}


def summarize(runs: list[dict], delta: float) -> dict:
  """The `summary` block of results.json; also adds `excess_error` to each pruned run."""
  dense = next((r for r in runs if r["method"] == "dense"), None)
  if dense is not None:
    for r in runs:
      if r["method"] != "dense" and len(accuracies(r)) > 1:
        r["excess_error"] = excess_error(r, dense)
  return {"potential_delta": delta, "prune_potential": prune_potential(runs, delta)}
