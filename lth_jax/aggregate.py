"""A study over seeds: per-seed workdirs of the same protocol summarised as mean, min and max.

  python -m lth_jax.report aggregate results/study/seed0 results/study/seed1 ... --out results/study

Each workdir's results.json is read (one that is not complete is left out, and said so); runs are matched
across seeds by what they are -- method with its criterion and control (and the instability analysis'
network, a sparse-training run's per-layer distribution), round, sparsity, and the instability analysis'
rewind step -- and every figure of `FIELDS` becomes mean / min / max over the seeds that have it. A study
split into several workdirs per seed (one per piece) may record a run in more than one of them (each
piece's own dense run): such a run counts once per seed, the first workdir's. Written to --out: aggregate.json, aggregate.md, and plots of test accuracy at the early-stopping
evaluation and of that evaluation's iteration against the weights remaining, with min-max error bars. A
`paper.json` in --out (the published figures, each series naming the figure or table it was read from) is
drawn on the same axes:

  {"source": "Frankle & Carbin 2019", "series": [{"label": "LTH Fig. 3 (reinit)", "where": "Figure 3",
   "field": "test_accuracy_at_best_epoch", "points": [[percent_remaining, value], ...]}]}
"""

import json
import os
import sys

import numpy as np

from lth_jax.plots import figure
from lth_jax.report_sanity import label
from lth_jax.training.checkpoint import write_atomic

# (field, header, format) summarised over seeds.
FIELDS = (("test_accuracy_at_best_epoch", "test acc @early stop", "{:.4f}"), ("best_step", "early-stop iter", "{:,.0f}"),
          ("best_epoch", "early-stop epoch", "{:.1f}"), ("test_accuracy", "test acc (end)", "{:.4f}"),
          ("accuracy_before_retrain", "acc before retrain", "{:.4f}"), ("ece", "ECE", "{:.4f}"), ("uce", "UCE", "{:.4f}"),
          ("error_barrier", "error barrier", "{:.4f}"))


def name(run: dict) -> str:
  """A run's name in the tables: `label`, and the instability network or sparse-training distribution."""
  parts = [label(run), run.get("network")]
  parts += [f"[{run['distribution']}]"] if run.get("distribution") else []
  return " ".join(filter(None, parts))


def run_key(run: dict) -> tuple:
  """What makes runs of different seeds the same run of the protocol."""
  return (name(run), run["round"], round(run["sparsity"], 4), run.get("rewind_step"))


def read_workdirs(workdirs: list) -> tuple[list, list]:
  """(documents of the complete workdirs, messages about the ones left out)."""
  docs, skipped = [], []
  for workdir in workdirs:
    path = os.path.join(workdir, "results.json")
    try:
      with open(path) as f:
        doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      skipped.append(f"{workdir}: unreadable ({e})")
      continue
    if not doc.get("complete"):
      skipped.append(f"{workdir}: not complete ({len(doc.get('runs', []))} runs so far)")
      continue
    docs.append({**doc, "workdir": workdir})
  return docs, skipped


def summarize(docs: list) -> list[dict]:
  """One row per run of the protocol, in the order runs first appear: n, seeds and each field's mean / min / max.

  Args:
    docs: results.json documents, one per seed.

  Returns:
    Rows {"method", "round", "sparsity", "rewind_step", "n", "seeds", FIELD: {"mean", "min", "max", "values"}}.
  """
  groups, seen = {}, set()
  for doc in docs:
    for run in doc["runs"]:
      seed = run.get("seed", doc.get("config", {}).get("seed"))
      if (run_key(run), seed) in seen:   # the same run of the same seed in another piece's workdir
        continue
      seen.add((run_key(run), seed))
      groups.setdefault(run_key(run), []).append(run)
  rows = []
  for (method, round_, sparsity, rewind_step), runs in groups.items():
    row = {"method": method, "round": round_, "sparsity": sparsity, "rewind_step": rewind_step, "n": len(runs),
           "seeds": [r.get("seed") for r in runs]}
    for field, _, _ in FIELDS:
      values = [float(r[field]) for r in runs if r.get(field) is not None]
      if values:
        row[field] = {"mean": float(np.mean(values)), "min": min(values), "max": max(values), "values": values}
    rows.append(row)
  return rows


def markdown(rows: list, docs: list, skipped: list, paper: dict | None = None) -> str:
  """aggregate.md: the table of rows, the workdirs and time, what was left out, and paper.json's figures and
  claims (each with where it was read) so the published numbers sit beside ours in text too."""
  fields = [f for f in FIELDS if any(f[0] in r for r in rows)]
  header = ["method", "round", "% remaining", *(["rewind step"] if any(r["rewind_step"] is not None for r in rows) else []),
            "n", *(h for _, h, _ in fields)]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [r["method"], str(r["round"]), f"{100 * (1 - r['sparsity']):.1f}"]
    cells += ["–" if r["rewind_step"] is None else str(r["rewind_step"])] if "rewind step" in header else []
    cells.append(str(r["n"]))
    for field, _, fmt in fields:
      s = r.get(field)
      cells.append("–" if s is None else f"{fmt.format(s['mean'])} [{fmt.format(s['min'])}, {fmt.format(s['max'])}]")
    lines.append("| " + " | ".join(cells) + " |")
  hours, timed = _hours(docs)
  seeds = {run.get("seed", doc.get("config", {}).get("seed")) for doc in docs for run in doc["runs"]}
  pieces = f" ({len(docs)} workdirs)" if len(docs) != len(seeds) else ""
  text = (f"# Aggregate over {len(seeds)} seeds{pieces}\n\n"
          f"Workdirs: {', '.join(d['workdir'] for d in docs)}\n\n" + "\n".join(lines) + "\n\n"
          "Each cell: mean [min, max] over the seeds. test acc @early stop: test accuracy at the evaluation chosen by "
          "config.train.best_by; early-stop iter: that evaluation's iteration.\n\n"
          f"Time: {hours:.2f} h, {timed}.\n")
  if skipped:
    text += "\nLeft out: " + "; ".join(skipped) + "\n"
  return text + paper_section(paper) if paper else text


def _hours(docs: list) -> tuple[float, str]:
  """(hours, how they were counted): the workdirs' own wall times where every one records it; otherwise the
  runs' wall times summed, which count a vmapped group's time once per member and, from code older than the
  workdirs' own wall time, a run read back from checkpoints at its read-back only."""
  if all("wall_time_s" in doc for doc in docs):
    return sum(doc["wall_time_s"] for doc in docs) / 3600, "the workdirs' wall times summed"
  return (sum(run.get("wall_time_s", 0.0) for doc in docs for run in doc["runs"]) / 3600,
          "summed over every run's wall time (not every workdir records its own: a vmapped group counts once per "
          "member, and a run resumed from checkpoints by older code only at its read-back)")


def paper_section(paper: dict) -> str:
  """paper.json as text: its source, each series' points and each claim, with the figure or table it came from."""
  lines = [f"\n## The paper: {paper.get('source', '')}\n"]
  for series in paper.get("series", []):
    points = ", ".join(f"{x:g}: {y:g}" for x, y in series["points"])
    lines.append(f"- {series['label']} ({series['where']}; {series['field']}): {points}")
  for claim in paper.get("claims", []):
    lines.append(f"- {claim['claim']} ({claim['where']})")   # a quotation carries its own quotation marks
  if paper.get("not_included"):
    lines.append(f"\nNot included: {paper['not_included']}")
  return "\n".join(lines) + "\n"


def plot(rows: list, field: str, ylabel: str, path: str, paper: dict | None) -> None:
  """`field` against the percentage of weights remaining: mean and min-max bars per method, paper's points beside."""
  with figure(path, "prunable weights remaining (%)", ylabel, legend_size=7) as ax:
    for method in dict.fromkeys(r["method"] for r in rows if field in r and r["rewind_step"] is None):
      points = sorted((100 * (1 - r["sparsity"]), r[field]) for r in rows
                      if r["method"] in (method, "dense") and field in r and r["rewind_step"] is None)
      if method == "dense" and len(points) == 1:
        ax.axhline(points[0][1]["mean"], color="gray", linestyle=":", label="dense (mean)")
        continue
      x = [p[0] for p in points]
      mean = np.array([p[1]["mean"] for p in points])
      spread = [mean - [p[1]["min"] for p in points], [p[1]["max"] for p in points] - mean]
      ax.errorbar(x, mean, yerr=spread, marker="o", markersize=3, capsize=3, label=f"{method} (ours, min-max)")
    for series in (paper or {}).get("series", []):
      if series.get("field") == field:
        x, y = zip(*series["points"])
        ax.plot(x, y, linestyle="--", marker="x", label=f"{series['label']} ({series['where']})")
    ax.set_xscale("log")
    ax.invert_xaxis()


def plot_barrier(rows: list, path: str, paper: dict | None) -> None:
  """The instability analysis: error barrier against the rewind step, mean and min-max bars per network and
  sparsity; the paper's `error_barrier` series (points [k, barrier]) beside."""
  with figure(path, "rewind iteration k", "error barrier (test error)", legend_size=7) as ax:
    lines = {}
    for r in rows:
      if "error_barrier" in r:
        lines.setdefault((r["method"], r["sparsity"]), []).append((r["rewind_step"], r["error_barrier"]))
    for (method, sparsity), points in lines.items():
      points.sort(key=lambda p: p[0])
      x, mean = [p[0] for p in points], np.array([p[1]["mean"] for p in points])
      spread = [mean - [p[1]["min"] for p in points], [p[1]["max"] for p in points] - mean]
      ax.errorbar(x, mean, yerr=spread, marker="o", markersize=3, capsize=3,
                  label=f"{method}, {100 * (1 - sparsity):.1f}% left (ours, min-max)")
    for series in (paper or {}).get("series", []):
      if series.get("field") == "error_barrier":
        x, y = zip(*series["points"])
        ax.plot(x, y, linestyle="--", marker="x", label=f"{series['label']} ({series['where']})")
    ax.set_xscale("symlog", linthresh=100)
    steps = [k for points in lines.values() for k, _ in points]
    ax.set_xlim(-10, 2 * max(steps + [100]))   # k = 0 alone would get an axis of +-0.05 iterations
    ax.set_ylim(bottom=0)


def aggregate(workdirs: list, out: str) -> list[dict]:
  """Summarise the workdirs into `out` (aggregate.json, aggregate.md, plots); returns the rows."""
  docs, skipped = read_workdirs(workdirs)
  if not docs:
    raise ValueError("no complete results.json among the workdirs: " + "; ".join(skipped))
  os.makedirs(out, exist_ok=True)
  paper_path = os.path.join(out, "paper.json")
  paper = json.load(open(paper_path)) if os.path.exists(paper_path) else None
  rows = summarize(docs)
  write_atomic(os.path.join(out, "aggregate.json"), json.dumps(
      {"workdirs": [d["workdir"] for d in docs], "left_out": skipped, "rows": rows}, indent=1))
  write_atomic(os.path.join(out, "aggregate.md"), markdown(rows, docs, skipped, paper))
  plot(rows, "test_accuracy_at_best_epoch", "test accuracy at early stopping", os.path.join(out, "accuracy.png"), paper)
  plot(rows, "best_step", "early-stopping iteration", os.path.join(out, "early_stop_iteration.png"), paper)
  if any("error_barrier" in r for r in rows):
    plot_barrier(rows, os.path.join(out, "instability_barrier.png"), paper)
  return rows


def main(argv: list) -> int:
  """`aggregate DIR... --out DIR`."""
  if "--out" not in argv or argv.index("--out") != len(argv) - 2 or len(argv) < 3:
    print("usage: python -m lth_jax.report aggregate WORKDIR... --out DIR", file=sys.stderr)
    return 2
  try:
    rows = aggregate(argv[:-2], argv[-1])
  except (ValueError, OSError, json.JSONDecodeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{len(rows)} runs summarised into {argv[-1]}/aggregate.md")
  return 0
