"""Shrunk vs full width: what removing channels buys in wall-clock time, in lth_jax and in Torch-Pruning.

  python benchmarks/shrink_speedup.py [--out results/shrink_speedup] [--batch 64] [--repeats 3]

For VGG-16 and ResNet-20 (lth_jax's zoo, CIFAR 32x32x3 inputs) at 30% / 50% / 70% of channels removed:

- lth_jax: `graph.channel_groups` of the model's eval-mode apply, then per group the channels of lowest L1
  norm (summed over every kernel slice of the group, as Torch-Pruning's GroupMagnitudeImportance(p=1)
  sums over its group) go, `round(fraction * size)` of them and never all; `graph.shrink` makes the
  narrow program. The full-width figure is the same re-evaluated program with every channel kept, so
  the two differ in widths only (plain `model.apply` is timed beside it).
- Torch-Pruning: the torch twins of benchmarks/torch_peer.py, `MagnitudePruner` (its DependencyGraph)
  with GroupMagnitudeImportance(p=1), the same ratio per group (global_pruning=False), the classifier
  ignored.

The weights are the random initialisation: which channels go does not change the time, only how many.
Timed: a jitted forward (torch: under no_grad) and a training step (value_and_grad / backward of the
cross-entropy + a plain SGD update) on one batch of random images, BatchNorm on its running statistics in
both frameworks (the groups are traced in eval mode); the median of `repeats` calls after a warm-up call
(which compiles), each blocking until its result is ready. FLOPs are multiply-adds of conv and dense
layers per image (`metrics.compression.flops`, ShrinkBench's count); the theoretical speedup is full over
shrunk. Results go to OUT/results.json and OUT/results.md.
"""

import argparse
import importlib.util
import os
import sys
from typing import Callable

if not __package__:   # `python benchmarks/shrink_speedup.py`: import `benchmarks` from the repo root
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import optax  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.common import Load, median_seconds  # noqa: E402
from lth_jax import models  # noqa: E402
from lth_jax.metrics import compression  # noqa: E402
from lth_jax.sparsity import graph, group_criteria  # noqa: E402

FRACTIONS = (0.3, 0.5, 0.7)
ARCHS = ("vgg16", "resnet20")
INPUT_SHAPE = (32, 32, 3)
LR = 0.01



def jax_train_step(fn: Callable):
  """Jitted (variables, opt_state, x, y) -> (variables, opt_state, loss): value_and_grad + SGD on 'params'."""
  tx = optax.sgd(LR)

  @jax.jit
  def step(variables, opt_state, x, y):
    def loss_fn(params):
      logits = fn({**variables, "params": params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state)
    return {**variables, "params": optax.apply_updates(variables["params"], updates)}, opt_state, loss
  return step, tx


def jax_timings(fn: Callable, variables, x, y, load: Load, label: str, repeats: int) -> dict:
  """Forward and training-step milliseconds of fn(variables, x)."""
  forward = jax.jit(fn)
  step, tx = jax_train_step(fn)
  opt_state = tx.init(variables["params"])
  return {"infer_ms": 1e3 * median_seconds(load, f"{label} forward",
                                           lambda: jax.block_until_ready(forward(variables, x)), repeats),
          "train_ms": 1e3 * median_seconds(load, f"{label} train step",
                                           lambda: jax.block_until_ready(step(variables, opt_state, x, y)),
                                           repeats)}


def jax_rows(arch: str, fractions, batch: int, repeats: int, load: Load, model_kwargs=None) -> list[dict]:
  """One row per width (fraction 0.0 is full width) of lth_jax model `arch`, shrunk by `graph.shrink`."""
  model = models.get(arch, num_classes=10, **(model_kwargs or {}))
  x = jax.random.normal(jax.random.key(0), (batch, *INPUT_SHAPE))
  y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
  variables = jax.jit(model.init)(jax.random.key(2), x[:1])
  fn = lambda v, inputs: model.apply(v, inputs, train=False)
  groups = graph.channel_groups(fn, variables, x)
  full_flops = compression.flops(model, variables, INPUT_SHAPE)
  applied = jax.jit(fn)
  rows = [{"framework": "jax", "arch": arch, "fraction": 0.0, "params": compression.count_params(variables),
           "flops": full_flops, "flop_speedup": 1.0, "groups": len(groups),
           "model_apply_infer_ms": 1e3 * median_seconds(
               load, f"{arch} model.apply forward", lambda: jax.block_until_ready(applied(variables, x)), repeats)}]
  for fraction in (0.0, *fractions):
    keep = group_criteria.channel_keep(variables, groups, fraction, "l1", scope="layerwise")
    narrow_fn, narrow_vars = graph.shrink(fn, variables, groups, keep)
    row = rows[0] if fraction == 0.0 else {"framework": "jax", "arch": arch, "fraction": fraction}
    flops = compression.flops(model, narrow_vars, INPUT_SHAPE)   # the full model's layers, narrow kernels
    row.update(params=compression.count_params(narrow_vars), flops=flops, flop_speedup=full_flops / flops,
               channels_kept=int(sum(k.sum() for k in keep)), channels=int(sum(g.size for g in groups)))
    row.update(jax_timings(narrow_fn, narrow_vars, x, y, load, f"{arch} jax {fraction:.0%}", repeats))
    if fraction:
      rows.append(row)
    print(f"  jax {arch} {fraction:.0%} removed: {row['params']:,} params, FLOPs x{row['flop_speedup']:.2f} fewer, "
          f"forward {row['infer_ms']:.1f} ms, train step {row['train_ms']:.1f} ms", flush=True)
  return _speedups(rows)


def torch_rows(arch: str, fractions, batch: int, repeats: int, load: Load) -> list[dict]:
  """One row per width of the torch twin of `arch`, pruned by Torch-Pruning's MagnitudePruner."""
  import torch   # optional: pip install 'lth_jax[bench]'
  import torch_pruning as tp
  from benchmarks import torch_peer

  torch_peer.setup("cpu")
  torch.manual_seed(0)
  x = torch.randn(batch, INPUT_SHAPE[2], *INPUT_SHAPE[:2])
  y = torch.randint(0, 10, (batch,))
  rows = []
  for fraction in (0.0, *fractions):
    model = torch_peer.MODELS[arch]().eval()
    if fraction:
      pruner = tp.pruner.MagnitudePruner(model, x[:1], importance=tp.importance.GroupMagnitudeImportance(p=1),
                                         pruning_ratio=fraction, ignored_layers=[model.output])
      pruner.step()
    macs, params = tp.utils.count_ops_and_params(model, x[:1])
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def forward(model=model):
      with torch.no_grad():
        model(x)

    def train_step(model=model, opt=opt):
      opt.zero_grad()
      torch.nn.functional.cross_entropy(model(x), y).backward()
      opt.step()
    label = f"{arch} torch {fraction:.0%}"
    row = {"framework": "torch", "arch": arch, "fraction": fraction, "params": int(params), "flops": int(macs),
           "infer_ms": 1e3 * median_seconds(load, f"{label} forward", forward, repeats),
           "train_ms": 1e3 * median_seconds(load, f"{label} train step", train_step, repeats)}
    row["flop_speedup"] = rows[0]["flops"] / row["flops"] if rows else 1.0
    rows.append(row)
    print(f"  torch {arch} {fraction:.0%} removed: {row['params']:,} params, FLOPs x{row['flop_speedup']:.2f} "
          f"fewer, forward {row['infer_ms']:.1f} ms, train step {row['train_ms']:.1f} ms", flush=True)
  return _speedups(rows)


def _speedups(rows: list[dict]) -> list[dict]:
  """Each row's full-width time over its own (rows[0] is full width)."""
  for row in rows:
    row["infer_speedup"] = rows[0]["infer_ms"] / row["infer_ms"]
    row["train_speedup"] = rows[0]["train_ms"] / row["train_ms"]
  return rows


def markdown(rows: list[dict], meta: dict) -> str:
  """The table of results.md: per model and fraction, lth_jax beside Torch-Pruning."""
  by = {(r["framework"], r["arch"], r["fraction"]): r for r in rows}
  lines = ["# Shrunk vs full width: measured speedup next to the FLOP ratio", "",
           f"Machine: {meta['cpu_model']}, {meta['cpu_count']} cores; {meta['load_note']}", "",
           f"Command: `{meta['command']}` (batch {meta['batch']}, median of {meta['repeats']} calls after one "
           "warm-up; few repeats to keep the run short, so differences of ~10% are noise).", "",
           "Speedup = full-width time / shrunk time (forward / training step); FLOPs x = full / shrunk "
           "multiply-adds per image.", "",
           "| model | removed | jax params | FLOPs x | jax forward ms (x) | jax train ms (x) | "
           "TP params | TP FLOPs x | torch forward ms (x) | torch train ms (x) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  order = lambda key: (ARCHS.index(key[0]) if key[0] in ARCHS else len(ARCHS), key)
  for arch, fraction in sorted({(r["arch"], r["fraction"]) for r in rows}, key=order):
    j, t = by[("jax", arch, fraction)], by.get(("torch", arch, fraction))
    cell = lambda r, key: f"{r[key + '_ms']:.1f} (x{r[key + '_speedup']:.2f})" if r else "-"
    torch_counts = f"{t['params']:,} | {t['flop_speedup']:.2f}" if t else "- | -"
    lines.append(f"| {arch} | {fraction:.0%} | {j['params']:,} | {j['flop_speedup']:.2f} | {cell(j, 'infer')} | "
                 f"{cell(j, 'train')} | {torch_counts} | {cell(t, 'infer')} | {cell(t, 'train')} |")
  full = [r for r in rows if r["framework"] == "jax" and r["fraction"] == 0.0]
  lines += ["", "Full width through plain `model.apply` (forward ms), against the re-evaluated program above: " +
            ", ".join(f"{r['arch']} {r['model_apply_infer_ms']:.1f}" for r in full), ""]
  return "\n".join(lines)


def run(archs, fractions, batch: int, repeats: int, with_torch: bool, model_kwargs=None) -> dict:
  """The benchmark's core: rows for every arch (and Torch-Pruning's where asked), and the machine."""
  load = Load()
  rows = []
  for arch in archs:
    print(f"{arch}", flush=True)
    rows += jax_rows(arch, fractions, batch, repeats, load, (model_kwargs or {}).get(arch))
    if with_torch:
      rows += torch_rows(arch, fractions, batch, repeats, load)
  meta = {**report.machine(), "batch": batch, "repeats": repeats, **load.summary()}
  if with_torch:
    import torch
    import torch_pruning as tp
    meta.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), torch_pruning=tp.__version__)
  return {"meta": meta, "rows": rows}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="results/shrink_speedup")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--archs", default=",".join(ARCHS))
  parser.add_argument("--no-torch", action="store_true", help="lth_jax only")
  args = parser.parse_args(argv)
  with_torch = not args.no_torch and bool(importlib.util.find_spec("torch_pruning"))
  result = run(args.archs.split(","), FRACTIONS, args.batch, args.repeats, with_torch)
  result["meta"]["command"] = "python benchmarks/shrink_speedup.py " + " ".join(argv if argv is not None else sys.argv[1:])
  report.write_results(args.out, result, markdown(result["rows"], result["meta"]))

if __name__ == "__main__":
  main()
