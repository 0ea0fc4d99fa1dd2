"""Training throughput: lth_jax dense vs masked, vmapped tickets vs one after another, and a PyTorch peer.

  python benchmarks/bench.py [--out results/bench_cpu] [--quick] [--models lenet300_100,conv6,resnet20]
  python -m benchmarks.bench ...    (the same, from the repo root)

Everything runs in one process on one device, on synthetic data of the real shapes (MNIST 28x28x1 for
LeNet-300-100, CIFAR 32x32x3 for Conv-6 and ResNet-20) that lives on the device before timing starts, as
`experiment.build` puts it there. A figure is images per second: the median over timed epochs, each
ended by `block_until_ready`, after untimed warm-up epochs (the first of which compiles; its time is
reported on its own). lth_jax epochs go through `Trainer.train_epoch` with the default loop="auto"
(one jitted step per batch on CPU, one `lax.scan` elsewhere; the loop used is recorded). An epoch
donates the state it is given, so each timed epoch gets its own copy, made before the timing starts.

1. lth_jax dense (all-ones masks) vs masked at 80% global magnitude sparsity: the same compiled
   programs on other mask values, timed alternately so both see the same background load.
2. K=8 tickets in one vmapped epoch (`train_epoch(..., batched=True)`, what `Trainer.fit` runs for
   several states) vs the same 8 trained one after another, one `train_epoch` each.
3. The seeds' PyTorch loop: the same architectures in torch, masks by `torch.nn.utils.prune`
   (global L1Unstructured, amount=0.8, hooks left on as the seeds train), SGD momentum 0.9, data already
   in memory as tensors and no DataLoader, so the comparison is of the training step alone.
4. End-to-end wall time of a small iterative-pruning run through `experiment.build` + `methods.run`.

Diagnostics beside the table: the loops compared -- a dense epoch of the first few batches as one
compiled `lax.scan` (loop="scan") vs one jitted step per batch (loop="steps"); torch masked on one
thread as well as on all cores (on a shared machine OpenMP's barriers can make all cores the slower
choice); and one 3x3 convolution's forward and weight gradient in both frameworks, alone and (XLA)
inside a scan. Results go to OUT/results.json and OUT/results.md.

It lives outside the library and uses lth_jax's public API only. Its parts: benchmarks/common.py (specs,
timing under load, figures), benchmarks/torch_peer.py (the PyTorch peer, imported only where torch is
installed), benchmarks/report.py (targets and results.md).
"""

import argparse
import datetime
import functools
import importlib.util
import json
import os
import statistics
import sys
import time
from typing import Callable

if not __package__:   # `python benchmarks/bench.py`: import `benchmarks` from the repo root, not this folder
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.common import (FULL, K, LOAD_LIMIT, LOOP_DIAGNOSTIC_S, QUICK, QUICK_MODELS, SPARSITY,  # noqa: E402
                               Load, Spec, epochs_on_copies, figure, paired_ratio, ratio, normalizer,
                               synthetic_pixels)
from lth_jax import config as lth_config  # noqa: E402
from lth_jax import experiment, masks, methods, models, pruning, training  # noqa: E402
from lth_jax.methods import sparse_training  # noqa: E402

if importlib.util.find_spec("torch"):   # the PyTorch peer is optional: pip install 'lth_jax[bench]'
  from benchmarks import torch_peer  # noqa: E402
else:
  torch_peer = None

_PROG = "python -m benchmarks.bench" if __package__ else "python benchmarks/bench.py"


# -- lth_jax ------------------------------------------------------------------------------------


def _opt_config():
  """The seeds' optimizer through lth_jax's own config: SGD, momentum 0.9, constant lr."""
  opt = lth_config.base().optimizer
  opt.name, opt.lr, opt.momentum, opt.schedule = "sgd", 0.01, 0.9, "constant"
  return opt


def _ticket(init, x, key):
  """Initial weights and their 80% global magnitude mask over every kernel (lth_jax's default rule)."""
  variables = init(key, x[:1])
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  which = masks.prunable(params)
  mask = pruning.magnitude(params, masks.init(params), SPARSITY, "global", which)
  return params, batch_stats, mask, which


def _until(measure, repeats: int, budget_s: float) -> list:
  """Up to `repeats` timings of `measure()`, stopping once they took `budget_s` (at least one)."""
  times = []
  while len(times) < repeats and (not times or sum(times) < budget_s):
    times.append(measure())
  return times


def within_cap(measure: Callable[[bool], float], warmup: int, repeats: int, cap_s: float) -> tuple[list, list]:
  """(warm-up times, timed times): `warmup` calls of `measure(True)`, then up to `repeats` of
  `measure(False)`, stopping once the measured seconds so far pass `cap_s` (no timed call then, if the
  warm-up did).

  Stops on what was measured, not on an estimate: a vmapped convnet epoch on CPU runs several times
  longer than K single-ticket epochs, so an estimate from those let a capped measurement run for minutes.
  """
  first, timed = [], []
  for _ in range(warmup):
    first.append(measure(True))
    if sum(first) > cap_s:
      return first, timed
  while len(timed) < repeats and sum(first) + sum(timed) <= cap_s:
    timed.append(measure(False))
  return first, timed


def bench_lth_jax(spec: Spec, load: Load, cap_s: float) -> dict:
  model = models.get(spec.name, num_classes=10)
  x_np, y_np = synthetic_pixels(spec)
  # uint8 on the device before timing and normalised inside the compiled steps, as experiment.build does
  x, y, normalize = jnp.asarray(x_np), jnp.asarray(y_np), normalizer(x_np)
  steps = training.steps_per_epoch(spec.n_train, spec.batch_size)
  trainer = training.Trainer(model, _opt_config(), spec.batch_size, steps, epochs=10, loop="auto",
                             normalize=normalize)
  init = jax.jit(functools.partial(model.init, train=False))   # one compile, not one per eager op
  params, batch_stats, mask, which = _ticket(init, normalize(x[:1]), jax.random.key(0))
  ones = masks.init(params)
  states = {"dense": trainer.init_state(params, batch_stats, ones, jax.random.key(1)),
            "masked": trainer.init_state(params, batch_stats, mask, jax.random.key(1))}
  out = {"loop": trainer.loop, "params": sum(p.size for p in jax.tree.leaves(params)),
         "sparsity": masks.sparsity(mask, which), "steps_per_epoch": steps}
  epoch = functools.partial(epochs_on_copies, trainer.train_epoch, x, y)
  many = functools.partial(epochs_on_copies, functools.partial(trainer.train_epoch, batched=True), x, y)

  # 1. Dense and masked run the same programs (the mask multiply is always there): the first warm-up
  # epoch compiles them for both.
  for _ in range(max(spec.warmup, 1)):
    for kind in ("dense", "masked"):
      seconds = load.measure(f"{spec.name} lth_jax warm-up epoch", epoch(states[kind]))
      out.setdefault("first_epoch_s", seconds)
  times = {"dense": [], "masked": []}
  for r in range(spec.repeats):
    # Alternate which goes first, so a drift in background load hits both alike.
    for kind in (("dense", "masked") if r % 2 == 0 else ("masked", "dense")):
      times[kind].append(load.measure(f"{spec.name} lth_jax {kind} epoch", epoch(states[kind])))
  out["dense"], out["masked"] = (figure(spec.n_train, times[k]) for k in ("dense", "masked"))
  out["masked_over_dense"] = paired_ratio(times)
  epoch_s = statistics.median(times["masked"])
  print(f"  lth_jax (loop: {trainer.loop}) dense {out['dense']['img_s']:,.1f} img/s, masked "
        f"{out['masked']['img_s']:,.1f} img/s (first epoch, compiling, {out['first_epoch_s']:.1f}s)", flush=True)

  # 1b. RigL against a dense step, side by side: a drop-and-grow update (lax.cond in the compiled step)
  # at every step -- the cost of one update -- and every 100 steps, RigL's cadence.
  out["rigl"] = {}
  for every in (1, 100):
    hook = sparse_training.DropAndGrow("gradient", every, 0.3, 10 * steps, tuple(jax.tree.leaves(which)))
    rigl = training.Trainer(model, _opt_config(), spec.batch_size, steps, epochs=10, loop="auto", mask_update=hook,
                            normalize=normalize)
    rigl_state = rigl.init_state(params, batch_stats, mask, jax.random.key(1))
    load.measure(f"{spec.name} lth_jax rigl every {every} warm-up epoch",
                 epochs_on_copies(rigl.train_epoch, x, y, rigl_state))
    paired = {"dense": [], "masked": []}   # paired_ratio's names: "masked" is the RigL epoch here
    for r in range(spec.repeats):
      for kind in (("dense", "masked") if r % 2 == 0 else ("masked", "dense")):
        run_epoch = epoch(states["dense"]) if kind == "dense" else epochs_on_copies(rigl.train_epoch, x, y, rigl_state)
        paired[kind].append(load.measure(f"{spec.name} lth_jax {kind} epoch (rigl pair)", run_epoch))
    out["rigl"][f"every_{every}"] = {**figure(spec.n_train, paired["masked"]), "over_dense": paired_ratio(paired),
                                     "dense_img_s": figure(spec.n_train, paired["dense"])["img_s"]}
  print("  rigl/dense throughput: " + ", ".join(f"update every {k[6:]} step(s) {v['over_dense']:.2f}"
                                                for k, v in out["rigl"].items()), flush=True)

  # 2. K tickets (own init, own mask): one vmapped epoch vs K single-ticket epochs one after another.
  tickets = [_ticket(init, normalize(x[:1]), jax.random.key(100 + i)) for i in range(K)]
  ticket_states = [trainer.init_state(p, b, m, jax.random.key(200 + i)) for i, (p, b, m, _) in enumerate(tickets)]
  estimate = K * epoch_s   # one vmapped epoch if vmapping gains nothing: a lower bound on CPU, not a plan
  repeats = min(spec.repeats, 5)   # K times the work of an epoch: fewer samples
  warmup = max(spec.warmup, 1)
  out["vmap"] = {"skipped": f"estimated {estimate:.0f}s an epoch (K x the single-ticket epoch) exceeds "
                            f"--cap_s={cap_s:g}"}
  if estimate <= cap_s:
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *ticket_states)   # the K tickets along a leading axis
    first, timed = within_cap(lambda warm: load.measure(f"{spec.name} lth_jax vmapped K={K} "
                                                        f"{'warm-up ' if warm else ''}epoch", many(stacked)),
                              warmup, repeats, cap_s)
    out["vmap"] = figure(K * spec.n_train, timed, first_epoch_s=first[0]) if timed else {
        "skipped": f"the warm-up epoch(s) took {sum(first):.0f}s, past --cap_s={cap_s:g}", "first_epoch_s": first[0]}
  # The same compiled programs as the masked figure, K times over: with no time for them, its throughput.
  timed = within_cap(lambda _: load.measure(f"{spec.name} lth_jax sequential K={K}", epoch(*ticket_states)),
                     0, repeats, cap_s)[1] if estimate <= cap_s else []
  out["sequential"] = figure(K * spec.n_train, timed, derived=False) if timed else {
      "img_s": out["masked"]["img_s"], "derived": True,
      "note": f"K x {estimate / K:.0f}s epochs exceed --cap_s; taken from the masked figure"}
  out["vmap_speedup"] = ratio(out["vmap"].get("img_s"), out["sequential"]["img_s"])
  if "img_s" in out["vmap"]:
    print(f"  vmapped K={K} {out['vmap']['img_s']:,.1f} img/s vs sequential {out['sequential']['img_s']:,.1f}",
          flush=True)
  else:
    print(f"  vmapped K={K} skipped: {out['vmap']['skipped']}", flush=True)

  # 3. The loops: a dense epoch of the first `loop_steps` batches as one lax.scan vs one step per batch.
  n = spec.loop_steps * spec.batch_size
  out["loops"] = {"steps_per_epoch": spec.loop_steps, "images": n}
  for loop in ("scan", "steps"):
    t = training.Trainer(model, _opt_config(), spec.batch_size, spec.loop_steps, epochs=10, loop=loop,
                         normalize=normalize)
    state = t.init_state(params, batch_stats, ones, jax.random.key(1))
    if loop == "scan":   # compiled ahead of time: a convnet's scan epoch is too slow on CPU to warm up with
      # Trainer has no public ahead-of-time compile: jitting its train_epoch (which calls the jitted scan
      # epoch, donating the state) compiles the same program into one, lowered here without running it.
      start = time.perf_counter()
      scan_epoch = jax.jit(t.train_epoch, donate_argnums=0)
      fn, extra = scan_epoch.lower(state, x[:n], y[:n]).compile(), {"compile_s": time.perf_counter() - start}
    else:
      fn, extra = t.train_epoch, {"first_epoch_s": load.measure(f"{spec.name} lth_jax loop=steps warm-up epoch",
                                                                epochs_on_copies(t.train_epoch, x[:n], y[:n], state))}
    measure = lambda: load.measure(f"{spec.name} lth_jax loop={loop} epoch", epochs_on_copies(fn, x[:n], y[:n], state))
    out["loops"][loop] = figure(n, _until(measure, spec.repeats, LOOP_DIAGNOSTIC_S), **extra)
  out["loops"]["scan_over_steps"] = out["loops"]["scan"]["img_s"] / out["loops"]["steps"]["img_s"]
  print(f"  loops on {spec.loop_steps} batches: scan {out['loops']['scan']['img_s']:,.1f} img/s, steps "
        f"{out['loops']['steps']['img_s']:,.1f} img/s", flush=True)
  return out


# -- conv probe ----------------------------------------------------------------------------------


PROBES = {"resnet20_16x16": 16, "conv6_64x64": 64}   # ResNet-20's first-stage conv, Conv-6's second


def conv_probe(load: Load, torch_device: str | None, batch: int = 64) -> dict:
  """One 3x3 conv at 32x32, batch 64 (C->C channels, per PROBES): forward and weight gradient alone.

  XLA's own lowering (plain `nn.Conv`) against lth_jax's CPU path (`lth_jax.models.cpu_conv`, what the
  models use), alone and inside a 2-trip scan; says how much of a convnet's gap is the convolutions.
  """
  out = {}
  for probe, channels in PROBES.items():
    x_np = np.random.default_rng(0).standard_normal((batch, 32, 32, channels), dtype=np.float32)
    x, xs = jnp.asarray(x_np), jnp.stack([jnp.asarray(x_np)] * 2)
    entry = {"shape": [batch, 32, 32, channels], "kernel": [3, 3, channels, channels], "torch_threads": None}
    for path, conv in (("xla", flax.linen.Conv(channels, (3, 3), padding="SAME", use_bias=False)),
                       ("lth_jax", flax.linen.Conv(channels, (3, 3), padding="SAME", use_bias=False,
                                                   conv_general_dilated=models.cpu_conv.conv_general_dilated))):
      params = conv.init(jax.random.key(0), x)
      weight_grad = jax.grad(lambda p, x, conv=conv: conv.apply(p, x).sum())

      def in_scan(p, xs, weight_grad=weight_grad):   # the weight gradient in a 2-trip scan, as in an epoch
        return jax.lax.scan(lambda p, xb: (jax.tree.map(lambda a, g: a - 0.01 * g, p, weight_grad(p, xb)), None),
                            p, xs)[0]
      fns = [("forward_ms", jax.jit(lambda p, x, conv=conv: conv.apply(p, x).sum()), (params, x), 1),
             ("weight_grad_ms", jax.jit(weight_grad), (params, x), 1)]
      if path == "lth_jax" or channels <= 16:   # XLA's own in a scan: seconds per trip at 64 channels
        fns.append(("weight_grad_in_scan_ms", jax.jit(in_scan), (params, xs), 2))
      for name, fn, args, per in fns:
        jax.block_until_ready(fn(*args))
        entry[f"{path}_{name}"] = 1e3 * statistics.median(
            [load.measure(f"conv probe {probe} {path} {name}", lambda: jax.block_until_ready(fn(*args)))
             for _ in range(3)]) / per
    if torch_device:
      entry.update(torch_peer.conv_probe(x_np, load, torch_device))
    out[probe] = entry
    print(f"  {probe}: weight gradient xla {entry['xla_weight_grad_ms']:.1f} ms, lth_jax "
          f"{entry['lth_jax_weight_grad_ms']:.1f} ms" + (f", torch forward + weight gradient "
                                                         f"{entry['torch_forward_weight_grad_ms']:.1f} ms"
                                                         if torch_device else ""), flush=True)
  return out


# -- on-device data -------------------------------------------------------------------------------

# A whole data set as experiment.build places it: images, train + val + test.
DATA_SETS = {"MNIST": (70_000, (28, 28, 1)), "CIFAR-10": (60_000, (32, 32, 3))}


def data_memory() -> dict:
  """Bytes a whole data set's images take on the device: uint8 pixels (the default) vs normalised float32.

  Measured on the placed arrays: `jax.Array.nbytes`, and the allocator's bytes in use where the backend
  reports them (GPUs; the CPU backend does not).
  """
  device, out = jax.devices()[0], {}
  for name, (n, shape) in DATA_SETS.items():
    x = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
    entry = {"images": n, "shape": list(shape)}
    for kind, host in (("uint8", x), ("float32", normalizer(x).host(x))):
      before = (device.memory_stats() or {}).get("bytes_in_use")
      placed = jax.block_until_ready(jax.device_put(host, device))
      after = (device.memory_stats() or {}).get("bytes_in_use")
      entry[kind] = {"nbytes": placed.nbytes, "allocator_bytes": None if before is None else after - before}
      del placed
    out[name] = entry
    print(f"  {name}: {entry['uint8']['nbytes'] / 2**20:,.0f} MiB as uint8, "
          f"{entry['float32']['nbytes'] / 2**20:,.0f} MiB as float32", flush=True)
  return out


# -- end to end -----------------------------------------------------------------------------------


def end_to_end(load: Load, quick: bool) -> dict:
  """configs/default.py (the digits MLP) with method=iterative through build + methods.run."""
  config = lth_config.base()   # what configs/default.py returns
  config.method = "iterative"
  config.iterative.rounds = 2 if quick else 3
  config.train.epochs = 2 if quick else 10
  config.train.log_every = 0
  runs = []

  def go():
    exp = experiment.build(config)
    methods.run([exp], [lambda record, state, rewind: runs.append(record.method)])  # keeps nothing else

  seconds = load.measure("end-to-end iterative", go)
  print(f"  end-to-end: {len(runs)} runs in {seconds:.1f}s", flush=True)
  return {"config": "configs/default.py (digits, MLP 128-64) with --config.method=iterative "
                    f"--config.iterative.rounds={config.iterative.rounds} --config.train.epochs={config.train.epochs}",
          "runs": len(runs), "epochs_trained": config.train.epochs * len(runs), "wall_s": seconds}


# -- driver ---------------------------------------------------------------------------------------


def run(model_names=tuple(FULL), quick: bool = False, with_torch: bool = True, with_end_to_end: bool = True,
        cap_s: float | None = None, out_dir: str | None = None, command: str = "") -> dict:
  """Runs the benchmark; returns the results dict (and writes OUT/results.json and .md when out_dir)."""
  started, load = time.perf_counter(), Load()
  specs = QUICK if quick else FULL
  cap_s = cap_s if cap_s is not None else (20.0 if quick else 120.0)
  skipped = []
  if with_torch and torch_peer is None:
    with_torch = False
    skipped.append("the PyTorch peer: torch is not installed (pip install 'lth_jax[bench]')")
  device = jax.devices()[0]
  torch_device = None
  if with_torch:
    torch_device = torch_peer.setup(device.platform)
    if (torch_device == "cuda") != (device.platform == "gpu"):
      skipped.append(f"same device: jax runs on {device.platform}, torch on {torch_device}")
  results = {"quick": quick, "cap_s": cap_s, "models": {}, "skipped": skipped,
             "meta": {"command": command or "benchmarks.bench.run()", "date": datetime.datetime.now(
                 datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": f"{device} ({device.device_kind})",
                      "platform": device.platform,
                      "torch_device": torch_device, "cpu_model": report.cpu_model(), "cpu_count": os.cpu_count(),
                      "torch_threads": os.cpu_count() if with_torch else None,
                      "versions": report.versions(torch_peer.version() if torch_peer else None),
                      "load_avg_start": os.getloadavg()}}
  for name in model_names:
    spec = specs[name]
    print(f"{spec.label}: {spec.n_train} images/epoch, batch {spec.batch_size}", flush=True)
    entry = {"images": spec.n_train, "batch_size": spec.batch_size, "repeats": spec.repeats,
             "input_shape": list(spec.shape), "lth_jax": bench_lth_jax(spec, load, cap_s)}
    if with_torch:
      entry["torch"] = torch_peer.bench(spec, load, torch_device)
      entry["lth_jax_over_torch"] = entry["lth_jax"]["masked"]["img_s"] / entry["torch"]["masked"]["img_s"]
      entry["lth_jax_over_torch_best"] = entry["lth_jax"]["masked"]["img_s"] / max(
          entry["torch"]["masked"]["img_s"], entry["torch"]["masked_1thread"]["img_s"])
    results["models"][name] = entry
  if any(n != "lenet300_100" for n in model_names):
    print("conv probe", flush=True)
    results["conv_probe"] = conv_probe(load, torch_device)
  print("on-device data", flush=True)
  results["data_memory"] = data_memory()
  if with_end_to_end:
    print("end to end", flush=True)
    results["end_to_end"] = end_to_end(load, quick)
  results["targets"] = report.targets(results)
  results["load"] = {"limit": LOAD_LIMIT, "warnings": load.warnings, "samples": load.samples,
                     "load_avg_end": os.getloadavg()}
  results["wall_s"] = time.perf_counter() - started
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
      json.dump(results, f, indent=1, default=float)
    report.write_markdown(results, os.path.join(out_dir, "results.md"))
  for t in results["targets"]:
    print(f"{t['target']}: {t['value']} — {'reported' if t['met'] is None else 'met' if t['met'] else 'NOT met'}")
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(prog=_PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="results/bench_cpu", help="where results.json and results.md go")
  parser.add_argument("--quick", action="store_true", help="~1 minute smoke run on tiny epochs")
  parser.add_argument("--models", default=None, help=f"comma-separated, from {', '.join(FULL)} (default: all; "
                      f"with --quick {', '.join(QUICK_MODELS)}, since each convnet adds ~1 minute of compiling)")
  parser.add_argument("--cap_s", type=float, default=None,
                      help="skip a vmapped measurement (derive the sequential one) whose estimate exceeds this "
                           "many seconds (default 120; 20 with --quick)")
  parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch peer")
  parser.add_argument("--no_end_to_end", action="store_true", help="skip the end-to-end iterative run")
  args = parser.parse_args(argv)
  names = [n for n in args.models.split(",") if n] if args.models else list(QUICK_MODELS if args.quick else FULL)
  unknown = [n for n in names if n not in FULL]
  if unknown:
    parser.error(f"--models: {', '.join(unknown)} not benchmarked; choose from {', '.join(FULL)}")
  command = " ".join([_PROG, *(argv if argv is not None else sys.argv[1:])])
  run(names, args.quick, not args.no_torch, not args.no_end_to_end, args.cap_s, args.out, command)


if __name__ == "__main__":
  main()
