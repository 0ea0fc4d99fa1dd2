"""Run reports in the workdir: results.json (atomic), results.md (comparison tables) and PNG plots.

  python -m lth_jax.report WORKDIR   # re-render results.md and the plots from WORKDIR/results.json
  python -m lth_jax.report aggregate WORKDIR... --out DIR   # a study over seeds (lth_jax.aggregate)
"""

import functools
import json
import os
import subprocess
import sys

import jax
import matplotlib.ticker
import numpy as np

from lth_jax import aggregate
from lth_jax import report_sanity
from lth_jax.metrics import potential
from lth_jax.plots import figure
from lth_jax.report_sanity import label
from lth_jax.training.checkpoint import write_atomic

COLUMNS = [  # (header, field, format)
    ("method", "method", "{}"), ("round", "round", "{}"), ("sparsity", "sparsity", "{:.3f}"),
    ("params left", "params_remaining", "{:,}"), ("test acc", "test_accuracy", "{:.4f}"),
    ("drop", "accuracy_drop", "{:+.4f}"), ("acc before retrain", "accuracy_before_retrain", "{:.4f}"),
    ("best epoch", "best_epoch", "{}"), ("test acc @best", "test_accuracy_at_best_epoch", "{:.4f}"),
    ("ECE", "ece", "{:.4f}"), ("UCE", "uce", "{:.4f}"), ("NLL", "nll", "{:.4f}"),
]
# ShrinkBench's figures, for every run: against the full-width dense network (lth_jax.compression).
COMPRESSION_COLUMNS = [
    ("method", "method", "{}"), ("round", "round", "{}"), ("params", "params", "{:,}"),
    ("non-zero params", "nonzero_params", "{:,}"), ("FLOPs", "flops", "{:,}"), ("non-zero FLOPs", "nonzero_flops", "{:,}"),
    ("compression ratio", "compression_ratio", "{:.3f}"), ("theoretical speedup", "theoretical_speedup", "{:.3f}"),
]
# Runs whose network was rebuilt narrower (slimming, early_bird).
_ms = lambda seconds: f"{1e3 * seconds:.1f}"
STRUCTURED_COLUMNS = [
    ("method", "method", "{}"), ("round", "round", "{}"), ("prune epoch", "prune_epoch", "{}"),
    ("channels kept", "channels_kept", "{:,}"), ("of", "channels_total", "{:,}"),
    ("structured sparsity", "structured_sparsity", "{:.3f}"),
    ("acc before retrain: masked", "accuracy_before_retrain", "{:.4f}"),
    ("rebuilt", "rebuilt_accuracy_before_retrain", "{:.4f}"), ("test acc", "test_accuracy", "{:.4f}"),
    ("inference ms: rebuilt", "inference_time_s", _ms), ("dense", "dense_inference_time_s", _ms),
    ("measured speedup", "inference_speedup", "{:.2f}"),
]


@functools.cache  # taken once, when the run starts (cli.run): later commits do not relabel it
def environment() -> dict:
  """jax version, devices and the code's git commit ('+dirty' when the code or configs differ from it)."""
  def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=os.path.dirname(__file__),
                          timeout=10).stdout.strip()
  try:
    commit = git("rev-parse", "--short", "HEAD")
    commit += "+dirty" if commit and git("status", "--porcelain", "--untracked-files=no", "--",
                                                 ":/lth_jax", ":/configs", ":/main.py") else ""
  except (OSError, subprocess.SubprocessError):
    commit = ""
  return {"jax": jax.__version__, "devices": ", ".join(str(d) for d in jax.devices()), "git": commit or "unknown"}


def write_json(workdir: str, config, runs: list, complete: bool, command: str = "", summary=None,
               env: dict | None = None, timing: dict | None = None) -> None:
  """results.json. `timing` ({"wall_time_s", "restored_s"}, as `cli` measures them) goes in at the top level."""
  doc = {"config": config.to_dict(), "environment": env or environment(), "command": command,
         "complete": complete, "runs": runs, "summary": summary or {}}
  doc.update(timing or {})
  write_atomic(os.path.join(workdir, "results.json"), json.dumps(doc, indent=1, default=_plain))


def _plain(value):
  if hasattr(value, "tolist"):
    return value.tolist()
  return str(value)


def _cell(run: dict, field: str, fmt) -> str:
  value = label(run) if field == "method" else run.get(field)
  return "–" if value is None else fmt(value) if callable(fmt) else fmt.format(value)


def markdown_table(runs: list, columns=COLUMNS) -> str:
  lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(r, f, fmt) for _, f, fmt in columns) + " |" for r in runs]
  return "\n".join(lines)


def by_seed(runs: list) -> dict:
  """{seed: that replicate's runs, in order}; runs written before replicates existed count as seed 0."""
  seeds = {}
  for r in runs:
    seeds.setdefault(r.get("seed", 0), []).append(r)
  return seeds


def _seeded(columns, runs: list):
  """A seed column in front when the runs come from more than one replicate."""
  return [("seed", "seed", "{}"), *columns] if len(by_seed(runs)) > 1 else columns


def replicate_groups(runs: list) -> list[list]:
  """The same run of every replicate: the k-th run of each seed (replicates run the same method sequence)."""
  seeds = list(by_seed(runs).values())
  return [[mine[k] for mine in seeds if k < len(mine)] for k in range(max(map(len, seeds), default=0))]


REPLICATE_FIELDS = ("sparsity", "test_accuracy", "accuracy_drop", "accuracy_before_retrain", "best_epoch", "ece",
                    "uce", "nll")


def replicate_summary(runs: list) -> list[dict]:
  """Mean and sample standard deviation (ddof 1) over the seeds of each run: results.json's summary.replicates."""
  out = []
  for group in replicate_groups(runs):
    row = {"method": group[0]["method"], "round": group[0]["round"], "n": len(group),
           "seeds": [r.get("seed", 0) for r in group]}
    for field in REPLICATE_FIELDS:
      values = [r[field] for r in group if r.get(field) is not None]
      row[f"{field}_mean"] = float(np.mean(values)) if values else None
      row[f"{field}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    out.append(row)
  return out


def replicates_table(summary: list) -> str:
  def cell(row, field, fmt):
    mean, std = row[f"{field}_mean"], row[f"{field}_std"]
    spread = "" if std is None else " ± " + fmt.replace("+", "").format(std)   # a spread has no sign
    return "–" if mean is None else fmt.format(mean) + spread
  header = ["method", "round", "n", "sparsity", "test acc", "drop", "acc before retrain", "best epoch", "ECE"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += [f"| {r['method']} | {r['round']} | {r['n']} | {cell(r, 'sparsity', '{:.3f}')} | "
            f"{cell(r, 'test_accuracy', '{:.4f}')} | {cell(r, 'accuracy_drop', '{:+.4f}')} | "
            f"{cell(r, 'accuracy_before_retrain', '{:.4f}')} | {cell(r, 'best_epoch', '{:.1f}')} | "
            f"{cell(r, 'ece', '{:.4f}')} |" for r in summary]
  return "\n".join(lines)


def summarize(runs: list, delta: float) -> dict:
  """results.json's summary: prune potential per replicate (each against its own dense run), averaged over
  the seeds, and with several seeds the mean and spread of every run (`replicates`)."""
  per_seed = {seed: potential.summarize(mine, delta) for seed, mine in by_seed(runs).items()}
  if len(per_seed) <= 1:
    return next(iter(per_seed.values()), potential.summarize([], delta))
  potentials = [s["prune_potential"] for s in per_seed.values()]
  mean = {method: {d: float(np.mean([p[method][d] for p in potentials if method in p]))
                   for d in values} for method, values in potentials[0].items()}
  return {"potential_delta": delta, "prune_potential": mean,
          "prune_potential_by_seed": {str(seed): s["prune_potential"] for seed, s in per_seed.items()},
          "replicates": replicate_summary(runs)}


def structure_section(runs: list) -> str:
  """Compression figures of every run; rebuilt networks and Early-Bird detection where there are any."""
  text = ("## Compression\n\n" + markdown_table(runs, _seeded(COMPRESSION_COLUMNS, runs)) + "\n\n"
          "Against the full-width dense network, ShrinkBench's definitions: FLOPs are multiply-adds of the "
          "conv and dense layers per example; compression ratio = all parameters / non-zero parameters; "
          "theoretical speedup = dense FLOPs / non-zero FLOPs.\n\n")
  rebuilt = [r for r in runs if "channels_kept" in r]
  if rebuilt:
    text += ("## Rebuilt narrower networks\n\n" + markdown_table(rebuilt, _seeded(STRUCTURED_COLUMNS, runs))
             + "\n\n"
             "acc before retrain: the full-width network at the pruning epoch with the removed channels masked "
             "to zero, and the rebuilt network before retraining (the same function). inference: median forward "
             "pass of one test batch through the rebuilt and the full-width network on the same device.\n\n")
  for r in (r for r in runs if "distance_curve" in r):
    text += (f"## Early-Bird\n\n{r['method']} (ratio {r['ratio']:g}, window {r['window']}, epsilon "
             f"{r['epsilon']:g}): " + (f"ticket drawn at epoch {r['detection_epoch']}" if r["detected"] else
                                      f"no ticket; pruned at epoch {r['prune_epoch']} (the search's last)")
             + ". Largest distance to the previous masks, per epoch: "
             + ", ".join("–" if d is None else f"{d:.4f}" for d in r["distance_curve"])
             + ".\n\n![distance curve](distance_curve.png)\n\n")
  return text


def write_markdown(workdir: str, config, runs: list, command: str, summary: dict, env: dict | None = None,
                   timing: dict | None = None) -> None:
  env = env or environment()
  took = "" if not timing else (f", wall time {timing['wall_time_s'] / 3600:.2f} h (of it "
                                f"{timing['restored_s'] / 3600:.2f} h of training read back from checkpoints)")
  text = (f"# {config.method} on {config.data.name} with {config.model.name}\n\n"
          f"Command: `{command}`\n\nMachine: {env['devices']}, jax {env['jax']}, git {env['git']}{took}\n\n"
          f"{markdown_table(runs, _seeded(COLUMNS, runs))}\n\n"
          "sparsity: fraction of prunable weights removed; drop: dense test accuracy minus this run's; "
          "acc before retrain: the trained weights with the new mask, before any reset or retraining; "
          "best epoch: epoch of best validation accuracy (the Lottery Ticket early-stopping criterion).\n\n"
          f"{_replicates_section(summary)}"
          "## Beyond accuracy\n\n"
          f"{beyond_table(runs)}\n\n"
          "ECE (T-scaled): after temperature scaling fitted on the validation split. AUROC: in-distribution "
          "test inputs are the positive class, max softmax probability the score. agreement / L2: top-1 "
          "agreement with and mean L2 distance to the dense network's softmax under uniform input noise.\n\n"
          f"{structure_section(runs)}"
          f"## Prune potential (delta = {config.metrics.potential_delta})\n\n{potential_table(summary)}\n\n"
          "![accuracy against sparsity](accuracy_vs_sparsity.png) ![ECE against sparsity](ece_vs_sparsity.png)\n\n"
          "![reliability](reliability.png) ![training curves](curves.png)\n")
  write_atomic(os.path.join(workdir, "results.md"), text)


def _replicates_section(summary: dict) -> str:
  if not summary.get("replicates"):
    return ""
  n = max(r["n"] for r in summary["replicates"])
  return (f"## Replicates ({n} seeds)\n\n{replicates_table(summary['replicates'])}\n\n"
          "mean ± sample standard deviation over the seeds of the same run (each seed's drop is against its own "
          "dense run). Prune potential below: the mean over the seeds of each seed's.\n\n")


def plot_vs_sparsity(runs: list, value, ylabel: str, path: str) -> None:
  """`value(run)` against the percentage of prunable weights remaining (log axis, as in the LTH paper).

  With several seeds: the mean over them, and their sample standard deviation as error bars.
  """
  points = []  # (method, % remaining, mean, std over the seeds) of every run
  for group in replicate_groups(runs):
    values = [value(r) for r in group if value(r) is not None]
    if values:
      points.append((label(group[0]), (1 - np.mean([r["sparsity"] for r in group])) * 100, np.mean(values),
                     np.std(values, ddof=1) if len(values) > 1 else 0.0))   # as summary.replicates
  dense = [p for p in points if p[0] == "dense"]
  with figure(path, "prunable weights remaining (%)", ylabel) as ax:
    for method in dict.fromkeys(p[0] for p in points if p[0] != "dense"):
      x, y, err = zip(*sorted(p[1:] for p in points if p[0] in (method, "dense")))
      ax.errorbar(x, y, yerr=err if any(err) else None, marker="o", capsize=3, label=method)
    for _, _, mean, _ in dense:
      ax.axhline(mean, color="gray", linestyle=":", label="dense")
    ax.set_xscale("log")
    ax.invert_xaxis()


def plot_reliability(runs: list, path: str) -> None:
  """Reliability diagrams: the dense network and each method's sparsest run (of the first seed), overlaid."""
  runs = next(iter(by_seed(runs).values()), [])
  chosen = [r for r in runs if r["method"] == "dense"][:1]
  for method in dict.fromkeys(r["method"] for r in runs if r["method"] != "dense"):
    chosen.append(max((r for r in runs if r["method"] == method), key=lambda r: r["sparsity"]))
  with figure(path, "confidence", "accuracy", size=(5, 5), legend_size=7) as ax:
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":")
    for r in chosen:
      points = [(c, a) for c, a in zip(r["reliability"]["confidence"], r["reliability"]["accuracy"]) if c is not None]
      ax.plot(*zip(*points), marker="o", markersize=3,
              label=f"{r['method']} s={r['sparsity']:.2f} ECE={r['ece']:.3f}")


def plot_potential(summary: dict, path: str) -> None:
  """Prune potential per method and test distribution."""
  potential = summary["prune_potential"]
  if not potential:
    return
  methods = list(potential)
  distributions = list(next(iter(potential.values())))
  width = 0.8 / len(methods)
  with figure(path, "", f"prune potential (delta={summary['potential_delta']})",
              size=(max(6, len(distributions) * 0.9), 4), legend_size=7, grid=False) as ax:
    for i, method in enumerate(methods):
      ax.bar(np.arange(len(distributions)) + i * width, [potential[method][d] for d in distributions], width,
             label=method)
    ax.set_xticks(np.arange(len(distributions)) + 0.4 - width / 2, distributions, rotation=45, ha="right", fontsize=7)


def plot_curves(runs: list, path: str) -> None:
  """Validation accuracy per epoch of every run (of the first seed)."""
  with figure(path, "epoch", "validation accuracy", legend_size=6, legend_columns=2) as ax:
    for r in next(iter(by_seed(runs).values()), []):
      if r["curve"]:
        rows = [row for row in r["curve"] if row["val_accuracy"] is not None]
        ax.plot([row["epoch"] for row in rows], [row["val_accuracy"] for row in rows], linewidth=1,   # a lone
                marker="o" if len(rows) == 1 else None, label=f"{r['method']} s={r['sparsity']:.2f}")   # point: no line


def _ood_names(runs):
  return list(dict.fromkeys(name for r in runs for name in (r.get("ood") or {})))


def beyond_table(runs: list) -> str:
  """Calibration, OOD, corruption and similarity figures, one row per run."""
  oods = _ood_names(runs)
  eps = max((float(e) for r in runs for e in (r.get("similarity") or {})), default=None)
  seeded = len(by_seed(runs)) > 1
  header = ["seed"] * seeded + ["method", "round", "sparsity", "ECE", "ECE (T-scaled)", "T", "UCE", "Brier"]
  header += [f"AUROC {name} (MSP)" for name in oods]
  header += ["corruption acc", "corruption ECE"] if any("corruption_accuracy" in r for r in runs) else []
  header += [f"agreement eps={eps:g}", f"L2 eps={eps:g}"] if eps is not None else []
  fmt = lambda v: "–" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in runs:
    row = [r.get("seed", 0)] * seeded + [r["method"], r["round"], f"{r['sparsity']:.3f}", r["ece"], r["ece_ts"],
                                          r["temperature"], r["uce"], r["brier"]]
    row += [(r.get("ood") or {}).get(name, {}).get("msp_auroc") for name in oods]
    if "corruption acc" in header:
      row += [r.get("corruption_accuracy"), r.get("corruption_ece")]
    if eps is not None:
      sim = (r.get("similarity") or {}).get(f"{eps:g}", {})
      row += [sim.get("agreement"), sim.get("l2")]
    lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
  return "\n".join(lines)


def potential_table(summary: dict) -> str:
  potential = summary.get("prune_potential") or {}
  if not potential:
    return ""
  distributions = list(next(iter(potential.values())))
  lines = ["| method | " + " | ".join(distributions) + " |", "|" + "---|" * (len(distributions) + 1)]
  lines += [f"| {m} | " + " | ".join(f"{v[d]:.3f}" for d in distributions) + " |" for m, v in potential.items()]
  return "\n".join(lines)


def write_all(workdir: str, config, runs: list, command: str, env: dict | None = None,
              timing: dict | None = None) -> None:
  summary = summarize(runs, config.metrics.potential_delta)
  path = lambda name: os.path.join(workdir, name)
  plot_vs_sparsity(runs, lambda r: r["test_accuracy"], "test accuracy", path("accuracy_vs_sparsity.png"))
  plot_vs_sparsity(runs, lambda r: r["ece"], "ECE (test)", path("ece_vs_sparsity.png"))
  for name in _ood_names(runs):
    plot_vs_sparsity(runs, lambda r: (r.get("ood") or {}).get(name, {}).get("msp_auroc"),
                     f"OOD AUROC vs {name} (MSP)", path(f"auroc_{name.replace(':', '_').replace('/', '_')}.png"))
  if any("corruption_accuracy" in r for r in runs):
    plot_vs_sparsity(runs, lambda r: r.get("corruption_accuracy"), "mean corruption accuracy",
                     path("corruption_accuracy_vs_sparsity.png"))
  plot_reliability(runs, path("reliability.png"))
  plot_potential(summary, path("prune_potential.png"))
  plot_curves(runs, path("curves.png"))
  if any(r.get("distance_curve") for r in runs):
    plot_distance_curve(runs, path("distance_curve.png"))
  write_markdown(workdir, config, runs, command, summary, env, timing)
  report_sanity.write(workdir, runs)   # after results.md: appends its sections
  write_json(workdir, config, runs, complete=True, command=command, summary=summary, env=env, timing=timing)


def plot_distance_curve(runs: list, path: str) -> None:
  """Early-Bird: per epoch, the largest mask distance to the previous `window` masks, against epsilon."""
  with figure(path, "epoch", "max Hamming distance to the last masks") as ax:
    for r in (r for r in runs if r.get("distance_curve")):
      points = [(epoch, d) for epoch, d in enumerate(r["distance_curve"], 1) if d is not None]
      if not points:  # the search ended before `window` earlier masks existed
        continue
      line, = ax.plot(*zip(*points), marker="o", markersize=3, label=f"{r['method']} ratio={r['ratio']:g}")
      ax.axhline(r["epsilon"], color=line.get_color(), linestyle=":", linewidth=1)
      if r["detected"]:
        ax.axvline(r["detection_epoch"], color=line.get_color(), linestyle="--", linewidth=1,
                   label=f"ticket drawn at epoch {r['detection_epoch']}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def main(argv: list) -> int:
  """Re-render a finished run's results.md and plots from its results.json (environment and command kept)."""
  import ml_collections
  if argv and argv[0] == "aggregate":
    return aggregate.main(argv[1:])
  if len(argv) != 1:
    print("usage: python -m lth_jax.report WORKDIR", file=sys.stderr)
    return 2
  path = os.path.join(argv[0], "results.json")
  try:
    with open(path) as f:
      doc = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    print(f"error: cannot read {path}: {e}", file=sys.stderr)
    return 2
  if not doc.get("complete"):
    print(f"error: {path} is not complete (the run was interrupted); rerun it to finish", file=sys.stderr)
    return 2
  write_all(argv[0], ml_collections.ConfigDict(doc["config"]), doc["runs"], doc["command"], doc["environment"],
            {k: doc[k] for k in ("wall_time_s", "restored_s") if k in doc})
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
