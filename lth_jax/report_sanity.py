"""Report pieces for pruning at initialization, its sanity checks and the instability analysis.

`label` names a run in tables and legends by method, criterion and control; `write` appends the
instability section to results.md (error barrier per network and rewind step) and draws its plots:
error along the interpolation path, and barrier against the rewind step.
"""

import os

from lth_jax.plots import figure


def label(run: dict) -> str:
  """Method, then prune_at_init's criterion and the control the run carries (tables and legends)."""
  criterion = [run.get("criterion")] if run["method"] == "prune_at_init" else []
  control = [f"+{run['control']}"] if run.get("control") not in (None, "none") else []
  return " ".join([run["method"], *filter(None, criterion), *control])


def _instability(runs: list) -> list:
  return [r for r in runs if r.get("error_curve")]


def instability_table(runs: list) -> str:
  lines = ["| seed | network | rewind step | sparsity | error at ends | max error on path | barrier |", "|" + "---|" * 7]
  for r in _instability(runs):
    ends = " / ".join(f"{e:.4f}" for e in r["copy_test_errors"])
    lines.append(f"| {r.get('seed', 0)} | {r['network']} | {r['rewind_step']} | {r['sparsity']:.3f} | {ends} | "
                 f"{max(r['error_curve']):.4f} | {r['error_barrier']:+.4f} |")
  return "\n".join(lines)


def plot_paths(runs: list, path: str) -> None:
  with figure(path, "interpolation alpha (copy 1 -> copy 2)", "test error", legend_size=7) as ax:
    for r in _instability(runs):
      ax.plot(r["alphas"], r["error_curve"], marker="o", markersize=2, label=f"{r['network']} k={r['rewind_step']}")


def plot_barriers(runs: list, path: str) -> None:
  with figure(path, "rewind step k (iterations of the dense run)", "error barrier") as ax:
    for network in dict.fromkeys(r["network"] for r in _instability(runs)):
      points = sorted((r["rewind_step"], r["error_barrier"]) for r in _instability(runs) if r["network"] == network)
      ax.plot(*zip(*points), marker="o", label=network)
    ax.set_xscale("symlog", linthresh=10)


def write(workdir: str, runs: list) -> None:
  """The instability section of results.md and its plots, when the runs hold any."""
  if not _instability(runs):
    return
  plot_paths(runs, os.path.join(workdir, "instability_paths.png"))
  plot_barriers(runs, os.path.join(workdir, "instability_barrier.png"))
  with open(os.path.join(workdir, "results.md"), "a") as f:
    f.write("\n## Instability (linear mode connectivity)\n\n" + instability_table(runs) + "\n\n"
            "Two copies from the dense run's weights after k iterations, trained with different data orders; "
            "test error along the line between their final weights. Barrier: max error on the path minus the "
            "mean of the two ends. Plots: instability_paths.png, instability_barrier.png.\n")
