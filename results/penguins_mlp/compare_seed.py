"""The seed's test losses beside ours: mean, sample std and range over the seeds of results.json(.gz).

python results/penguins_mlp/compare_seed.py results/penguins_mlp
"""

import gzip
import json
import statistics
import sys
from pathlib import Path

SEED = {"unpruned": 0.4699, "pruned": 0.4812, "lottery ticket": 0.4672, "dynamic": 0.4289}
OURS = {"unpruned": "dense", "pruned": "oneshot", "lottery ticket": "oneshot_reinit", "dynamic": "dynamic"}


def main(workdir):
  path = Path(workdir) / "results.json"
  text = path.read_text() if path.is_file() else gzip.decompress(path.with_suffix(".json.gz").read_bytes())
  runs = json.loads(text)["runs"]
  by_trial = {trial: sorted((r["seed"], r["nll"], r["test_accuracy"], r["sparsity"]) for r in runs
                            if r["method"] == method) for trial, method in OURS.items()}
  print("| trial | method | sparsity | seed's test loss | our test loss, mean ± std (5 seeds) | min – max | "
        "per seed | our test accuracy, mean |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for trial, rows in by_trial.items():
    losses = [loss for _, loss, _, _ in rows]
    print(f"| {trial} | {OURS[trial]} | {rows[0][3]:.3f} | {SEED[trial]:.4f} | {statistics.mean(losses):.4f} ± "
          f"{statistics.stdev(losses):.4f} | {min(losses):.4f} – {max(losses):.4f} | "
          f"{' '.join(f'{x:.4f}' for x in losses)} | {statistics.mean(a for _, _, a, _ in rows):.4f} |")
  dense = {seed: loss for seed, loss, _, _ in by_trial["unpruned"]}
  print("\n| trial | paired difference to unpruned (same seed), mean ± std | seeds below unpruned |")
  print("| --- | --- | --- |")
  for trial, rows in by_trial.items():
    if trial == "unpruned":
      continue
    diffs = [loss - dense[seed] for seed, loss, _, _ in rows]
    print(f"| {trial} | {statistics.mean(diffs):+.4f} ± {statistics.stdev(diffs):.4f} | "
          f"{sum(d < 0 for d in diffs)} of {len(diffs)} |")


if __name__ == "__main__":
  main(sys.argv[1])
