"""Gather the ten runs of run.sh into one results.json / results.md / plots here, and a summary table.

  python results/at_init_lenet_cpu/combine.py /tmp/at_init_lenet
"""

import json
import os
import sys

import ml_collections

from lth_jax import report

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = [f"{c}_{k}" for k in ("none", "shuffle") for c in ("magnitude", "snip", "grasp", "synflow", "random")]


def main(source: str) -> None:
  docs = {name: json.load(open(os.path.join(source, name, "results.json"))) for name in ORDER}
  runs = []
  for name, doc in docs.items():
    for r in doc["runs"]:
      if r["method"] == "dense" and runs:   # every run trained the same dense network (same seed): keep one
        continue
      runs.append({**r, "workdir": name})
  first = docs[ORDER[0]]
  config = ml_collections.ConfigDict(first["config"])
  command = "\n".join(docs[n]["command"] for n in ORDER)
  report.write_all(HERE, config, runs, command, first["environment"])
  # accuracy at the three targets: prune_at_init at the exact sparsities, IMP at its nearest rounds
  targets = (0.9, 0.98, 0.995)
  table = {}
  for r in runs:
    if r["method"] in ("prune_at_init", "iterative"):
      table.setdefault(report.label(r) + ("" if r["method"] != "iterative" else " (magnitude, rewind k=50)"), {})[
          r["sparsity"]] = r["test_accuracy"]
  lines = ["| run | " + " | ".join(f"{100 * (1 - t):g}% left" for t in targets) + " |", "|---|---|---|---|"]
  for run, by_sparsity in table.items():
    cells = []
    for t in targets:
      s = min(by_sparsity, key=lambda x: abs(x - t))
      cells.append(f"{by_sparsity[s]:.4f}" + ("" if abs(s - t) < 1e-3 else f" ({100 * (1 - s):.1f}% left)"))
    lines.append(f"| {run} | " + " | ".join(cells) + " |")
  with open(os.path.join(HERE, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main(sys.argv[1])
