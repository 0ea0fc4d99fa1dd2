"""Pruning at initialization against IMP with rewinding, with and without the layer-wise shuffle control.

LeNet-300-100 on MNIST, scaled down for a shared 2-core CPU: 3000 training images, 4 epochs of 50
iterations (batch 60, Adam 1.2e-3), 1200 validation and 2000 test images. One dense run (seed 0) is
shared: every configuration has the same theta_0 and data. Global selection throughout.

  python results/at_init_lenet_cpu/run.py        (from the repository root)

Writes results.json / results.md / plots here through lth_jax.report, and summary.md.
"""

import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from configs import mnist_lenet  # noqa: E402
from lth_jax import experiment, report  # noqa: E402
from lth_jax.methods import at_init, cohort, common, lottery  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = (0.9, 0.98, 0.995)
CRITERIA = ("magnitude", "snip", "grasp", "synflow", "random")


def config(**prune):
  c = mnist_lenet.get_config()
  c.data.dir = os.path.join(HERE, "..", "..", "..", "shared", "data", "mnist")
  c.data.subset, c.data.test_subset, c.data.val_fraction = 3000, 2000, 0.02
  c.train.epochs, c.train.eval_every, c.train.log_every, c.train.vmap = 4, 4, 0, True
  c.prune.scope, c.prune.layer_scale = "global", ()
  c.metrics.ood, c.metrics.similarity_eps, c.metrics.max_examples = (), (), 200
  c.iterative.rounds, c.iterative.rate, c.iterative.reset = 4, 0.0, "rewind"
  c.iterative.random_control_every = 0
  c.prune.rewind_step = 20   # IMP rewinds to iteration 20 (of 200): "with rewinding"
  c.method = "compare"
  for key, value in prune.items():
    c.prune[key] = value
  return c


def main():
  started, runs = time.time(), []
  record = lambda rec, state, rewind: (runs.append(rec.as_dict()), print(report.label(runs[-1]),
                                       f"{runs[-1]['sparsity']:.4f}", f"{runs[-1]['test_accuracy']:.4f}", flush=True))
  base = experiment.build(config())
  dense_run = cohort.run([common.dense(base, record)], True)[0]
  for control in ("none", "shuffle"):
    exp = experiment.build(config(control=control))
    cohort.run([lottery.iterative_sweep(exp, dense_run, [max(TARGETS)], record)], True)
    for criterion in CRITERIA:
      exp = experiment.build(config(control=control, criterion=criterion, synflow_iterations=100))
      cohort.run([at_init.sweep(exp, dense_run, list(TARGETS), record)], True)
  report.write_all(HERE, base.config, runs, "python results/at_init_lenet_cpu/run.py", report.environment())
  table = {}
  for r in runs:
    if r["method"] != "dense":
      table.setdefault(report.label(r), {})[r["sparsity"]] = r["test_accuracy"]
  lines = ["| run | " + " | ".join(f"{100 * (1 - t):g}% left" for t in TARGETS) + " |", "|---|---|---|---|"]
  for name, by_sparsity in table.items():
    cells = []
    for t in TARGETS:
      s = min(by_sparsity, key=lambda x: abs(x - t))
      cells.append(f"{by_sparsity[s]:.4f}" + ("" if abs(s - t) < 1e-3 else f" ({100 * (1 - s):.1f}% left)"))
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append(f"\ndense: {runs[0]['test_accuracy']:.4f}; wall {time.time() - started:.0f} s")
  with open(os.path.join(HERE, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
