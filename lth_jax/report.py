"""Run reports in the workdir: results.json (atomic), results.md (a comparison table) and PNG plots."""

import json
import os
import subprocess

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = [  # (header, field, format)
    ("method", "method", "{}"), ("round", "round", "{}"), ("sparsity", "sparsity", "{:.3f}"),
    ("params left", "params_remaining", "{:,}"), ("test acc", "test_accuracy", "{:.4f}"),
    ("drop", "accuracy_drop", "{:+.4f}"), ("acc before retrain", "accuracy_before_retrain", "{:.4f}"),
    ("best epoch", "best_epoch", "{}"), ("test acc @best", "test_accuracy_at_best_epoch", "{:.4f}"),
    ("ECE", "ece", "{:.4f}"), ("UCE", "uce", "{:.4f}"), ("NLL", "nll", "{:.4f}"),
]


def environment() -> dict:
  try:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(__file__), timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    git = ""
  return {"jax": jax.__version__, "devices": ", ".join(str(d) for d in jax.devices()), "git": git or "unknown"}


def write_atomic(path: str, text: str) -> None:
  """Write to a temporary file in the same directory, then rename: readers never see half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json(workdir: str, config, runs: list, complete: bool, command: str = "") -> None:
  doc = {"config": config.to_dict(), "environment": environment(), "command": command,
         "complete": complete, "runs": runs}
  write_atomic(os.path.join(workdir, "results.json"), json.dumps(doc, indent=1, default=_plain))


def _plain(value):
  if hasattr(value, "tolist"):
    return value.tolist()
  return str(value)


def _cell(run: dict, field: str, fmt: str) -> str:
  value = run.get(field)
  return "–" if value is None else fmt.format(value)


def markdown_table(runs: list) -> str:
  lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(_cell(r, f, fmt) for _, f, fmt in COLUMNS) + " |" for r in runs]
  return "\n".join(lines)


def write_markdown(workdir: str, config, runs: list, command: str) -> None:
  env = environment()
  text = (f"# {config.method} on {config.data.name} with {config.model.name}\n\n"
          f"Command: `{command}`\n\nMachine: {env['devices']}, jax {env['jax']}, git {env['git']}\n\n"
          f"{markdown_table(runs)}\n\n"
          "sparsity: fraction of prunable weights removed; drop: dense test accuracy minus this run's; "
          "acc before retrain: the trained weights with the new mask, before any reset or retraining; "
          "best epoch: epoch of best validation accuracy (the Lottery Ticket early-stopping criterion).\n\n"
          "![accuracy against sparsity](accuracy_vs_sparsity.png)\n\n![training curves](curves.png)\n")
  write_atomic(os.path.join(workdir, "results.md"), text)


def plot_accuracy_vs_sparsity(runs: list, path: str) -> None:
  """Test accuracy against the percentage of prunable weights remaining (log axis, as in the LTH paper)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  dense = [r for r in runs if r["method"] == "dense"]
  for method in dict.fromkeys(r["method"] for r in runs if r["method"] != "dense"):
    points = sorted(((1 - r["sparsity"]) * 100, r["test_accuracy"]) for r in runs + dense
                    if r["method"] in (method, "dense"))
    ax.plot(*zip(*points), marker="o", label=method)
  for r in dense:
    ax.axhline(r["test_accuracy"], color="gray", linestyle=":", label="dense")
  ax.set_xscale("log")
  ax.invert_xaxis()
  ax.set_xlabel("prunable weights remaining (%)")
  ax.set_ylabel("test accuracy")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_curves(runs: list, path: str) -> None:
  """Validation accuracy per epoch of every run."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in runs:
    if r["curve"]:
      epochs = [row["epoch"] for row in r["curve"]]
      ax.plot(epochs, [row["val_accuracy"] for row in r["curve"]], linewidth=1,
              label=f"{r['method']} s={r['sparsity']:.2f}")
  ax.set_xlabel("epoch")
  ax.set_ylabel("validation accuracy")
  ax.legend(fontsize=6, ncol=2)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_all(workdir: str, config, runs: list, command: str) -> None:
  plot_accuracy_vs_sparsity(runs, os.path.join(workdir, "accuracy_vs_sparsity.png"))
  plot_curves(runs, os.path.join(workdir, "curves.png"))
  write_markdown(workdir, config, runs, command)
  write_json(workdir, config, runs, complete=True, command=command)
