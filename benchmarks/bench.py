"""Training throughput: lth_jax dense vs masked, vmapped tickets vs one after another, and a PyTorch peer.

  python -m lth_jax.bench [--out results/bench_cpu] [--quick] [--models lenet300_100,conv6,resnet20]

Everything runs in one process on one device, on synthetic data of the real shapes (MNIST 28x28x1 for
LeNet-300-100, CIFAR 32x32x3 for Conv-6 and ResNet-20) that lives on the device before timing starts, as
`experiment.build` puts it there. A figure is images per second: the median over timed epochs, each
ended by `block_until_ready`, after untimed warm-up epochs (the first of which compiles; its time is
reported on its own). lth_jax epochs go through `Trainer.train_epoch` with the default loop="auto"
(one jitted step per batch on CPU, one `lax.scan` elsewhere; the loop used is recorded). An epoch
donates the state it is given, so each timed epoch gets its own copy, made before the timing starts.

1. lth_jax dense (all-ones masks) vs masked at 80% global magnitude sparsity: the same compiled
   programs on other mask values, timed alternately so both see the same background load.
2. K=8 tickets in one vmapped epoch (`train_epoch(..., batched=True)`, what `fit_many` runs) vs the
   same 8 trained one after another, one `train_epoch` each.
3. The seeds' PyTorch loop: the same architectures in torch, masks by `torch.nn.utils.prune`
   (global L1Unstructured, amount=0.8, hooks left on as the seeds train), SGD momentum 0.9, data already
   in memory as tensors and no DataLoader, so the comparison is of the training step alone.
4. End-to-end wall time of a small iterative-pruning run through `experiment.build` + `methods.run`.

Diagnostics beside the table: the loops compared -- a dense epoch of the first few batches as one
compiled `lax.scan` (loop="scan") vs one jitted step per batch (loop="steps"); torch masked on one
thread as well as on all cores (on a shared machine OpenMP's barriers can make all cores the slower
choice); and one 3x3 convolution's forward and weight gradient in both frameworks, alone and (XLA)
inside a scan. Results go to OUT/results.json and OUT/results.md.
"""

import argparse
import dataclasses
import datetime
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lth_jax import config as config_lib
from lth_jax.sparsity import masks as masks_lib
from lth_jax import models
from lth_jax.sparsity import pruning
from lth_jax import train

SPARSITY = 0.8
K = 8
LOAD_LIMIT = 1.5       # 1-minute load average above which a measurement is flagged noisy
MASKED_TARGET = 0.03   # masked at most 3% slower than dense (faster is no shortfall)
LENET_TORCH_TARGET = 1.5
LOOP_DIAGNOSTIC_S = 30.0   # the loop diagnostic stops timing more epochs of a loop once they took this long


@dataclasses.dataclass(frozen=True)
class Spec:
  """One model's benchmark: input shape, batch and how many images an epoch holds."""
  name: str
  label: str
  shape: tuple          # one image, HWC
  batch_size: int
  n_train: int          # images per epoch
  repeats: int          # timed epochs (the figure is their median)
  warmup: int           # untimed epochs of dense and of masked (at least one: the first compiles)
  loop_steps: int       # batches in the loop diagnostic's epoch


# The loop diagnostic's convnet epochs are 2 batches, the fewest that keep the scan a real loop (XLA
# removes a one-trip loop): a convnet's scan epoch runs at a few images/s or less on XLA CPU.
FULL = {
    "lenet300_100": Spec("lenet300_100", "LeNet-300-100", (28, 28, 1), 60, 6000, 15, 1, 100),
    "conv6": Spec("conv6", "Conv-6", (32, 32, 3), 64, 256, 3, 1, 2),
    "resnet20": Spec("resnet20", "ResNet-20", (32, 32, 3), 64, 640, 3, 1, 2),
}
# Smoke mode: the same code paths on tiny epochs; its figures are not comparable.
QUICK = {
    "lenet300_100": Spec("lenet300_100", "LeNet-300-100", (28, 28, 1), 60, 600, 3, 1, 10),
    "conv6": Spec("conv6", "Conv-6", (32, 32, 3), 2, 4, 1, 0, 2),
    "resnet20": Spec("resnet20", "ResNet-20", (32, 32, 3), 2, 4, 1, 0, 2),
}
QUICK_MODELS = ("lenet300_100",)


# -- timing and load ------------------------------------------------------------------------------


class Load:
  """Load average before each measurement, and the CPU share other processes took during it.

  The load average counts this benchmark's own threads too, so it reads high even on an idle machine
  once a measurement has run a while; the share of CPU time not spent by this process (from
  /proc/stat) is the better noise indicator, and both are recorded.
  """

  def __init__(self):
    self.samples, self.warnings, self._warned = [], [], set()

  @staticmethod
  def _cpu():
    try:
      with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
      return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # not idle, not iowait
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system

  def measure(self, what: str, fn: Callable[[], Any]) -> float:
    """Seconds `fn` takes (it must block until its results are ready)."""
    load = os.getloadavg()[0]
    if load > LOAD_LIMIT:
      message = f"load average {load:.2f} > {LOAD_LIMIT} before {what}: the figure is noisy"
      self.warnings.append(message)
      if what not in self._warned:   # once per kind of measurement: repeats of it say the same
        self._warned.add(what)
        print(f"  WARNING: {message}", flush=True)
    before = self._cpu()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    after = self._cpu()
    others = None
    wall = after[0] - before[0] if before and after else 0.0
    if wall > 0.5:   # /proc/stat counts in 10 ms ticks: shorter spans say nothing
      others = max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / (wall * os.cpu_count()))
    self.samples.append({"what": what, "load_avg_1m": round(load, 2), "seconds": seconds,
                         "others_cpu_share": None if others is None else round(others, 3)})
    return seconds


def _figure(images: int, seconds: list, **extra) -> dict:
  """Images/s from the median epoch time."""
  return {"img_s": images / statistics.median(seconds), "epoch_s": seconds, **extra}


def _ratio(a, b):
  return a / b if a and b else None


def _paired_ratio(times: dict) -> float:
  """Masked/dense throughput as the median over back-to-back pairs: a pair shares its background load."""
  return statistics.median(d / m for d, m in zip(times["dense"], times["masked"]))


# -- lth_jax ------------------------------------------------------------------------------------


def _opt_config():
  """The seeds' optimizer through lth_jax's own config: SGD, momentum 0.9, constant lr."""
  opt = config_lib.base().optimizer
  opt.name, opt.lr, opt.momentum, opt.schedule = "sgd", 0.01, 0.9, "constant"
  return opt


def _data(spec: Spec, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((spec.n_train, *spec.shape), dtype=np.float32)
  y = rng.integers(0, 10, spec.n_train).astype(np.int32)
  return x, y


def _ticket(init, x, key):
  """Initial weights and their 80% global magnitude mask over every kernel (lth_jax's default rule)."""
  variables = init(key, x[:1])
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  which = masks_lib.prunable(params)
  masks = pruning.magnitude(params, masks_lib.init(params), SPARSITY, "global", which)
  return params, batch_stats, masks, which


def _epochs(epoch_fn, x, y, *states):
  """A thunk for `Load.measure` running one epoch per state, one after another, on copies made now.

  An epoch donates (consumes) the state it is given: the copies let a state be timed again, and are
  made here so that copying is never timed.
  """
  fresh = [jax.block_until_ready(jax.tree.map(lambda a: a.copy(), s)) for s in states]

  def go():
    for state in fresh:
      jax.block_until_ready(epoch_fn(state, x, y))   # fit blocks at every epoch end to log its metrics
  return go


def _until(measure, repeats: int, budget_s: float) -> list:
  """Up to `repeats` timings of `measure()`, stopping once they took `budget_s` (at least one)."""
  times = []
  while len(times) < repeats and (not times or sum(times) < budget_s):
    times.append(measure())
  return times


def bench_lth_jax(spec: Spec, load: Load, cap_s: float) -> dict:
  model = models.get(spec.name, num_classes=10)
  x_np, y_np = _data(spec)
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)   # on the device before timing, as experiment.build does
  steps = train.steps_per_epoch(spec.n_train, spec.batch_size)
  trainer = train.Trainer(model, _opt_config(), spec.batch_size, steps, epochs=10, loop="auto")
  init = jax.jit(functools.partial(model.init, train=False))   # one compile, not one per eager op
  params, batch_stats, masks, which = _ticket(init, x, jax.random.key(0))
  ones = masks_lib.init(params)
  states = {"dense": trainer.init_state(params, batch_stats, ones, jax.random.key(1)),
            "masked": trainer.init_state(params, batch_stats, masks, jax.random.key(1))}
  out = {"loop": trainer.loop, "params": sum(p.size for p in jax.tree.leaves(params)),
         "sparsity": masks_lib.sparsity(masks, which), "steps_per_epoch": steps}
  epoch = functools.partial(_epochs, trainer.train_epoch, x, y)
  many = functools.partial(_epochs, functools.partial(trainer.train_epoch, batched=True), x, y)

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
  out["dense"], out["masked"] = (_figure(spec.n_train, times[k]) for k in ("dense", "masked"))
  out["masked_over_dense"] = _paired_ratio(times)
  epoch_s = statistics.median(times["masked"])
  print(f"  lth_jax (loop: {trainer.loop}) dense {out['dense']['img_s']:,.1f} img/s, masked "
        f"{out['masked']['img_s']:,.1f} img/s (first epoch, compiling, {out['first_epoch_s']:.1f}s)", flush=True)

  # 2. K tickets (own init, own mask): one vmapped epoch vs K single-ticket epochs one after another.
  tickets = [_ticket(init, x, jax.random.key(100 + i)) for i in range(K)]
  ticket_states = [trainer.init_state(p, b, m, jax.random.key(200 + i)) for i, (p, b, m, _) in enumerate(tickets)]
  estimate = K * epoch_s   # what one vmapped epoch costs if vmapping gains nothing
  repeats = min(spec.repeats, 5)   # K times the work of an epoch: fewer samples
  warmup = max(spec.warmup, 1)
  if estimate * (warmup + repeats) > cap_s:
    out["vmap"] = {"skipped": f"estimated {estimate:.0f}s an epoch (K x the single-ticket epoch) "
                              f"x {warmup + repeats} exceeds --cap_s={cap_s:g}"}
  else:
    stacked = train._stack(ticket_states)
    first = [load.measure(f"{spec.name} lth_jax vmapped K={K} warm-up epoch", many(stacked)) for _ in range(warmup)]
    out["vmap"] = _figure(K * spec.n_train, [load.measure(f"{spec.name} lth_jax vmapped K={K} epoch", many(stacked))
                                             for _ in range(repeats)], first_epoch_s=first[0])
  if estimate * repeats > cap_s:
    # The same compiled programs K times over: its throughput is the masked figure by construction.
    out["sequential"] = {"img_s": out["masked"]["img_s"], "derived": True,
                         "note": f"K x {estimate / K:.0f}s epochs exceed --cap_s; taken from the masked figure"}
  else:
    out["sequential"] = _figure(K * spec.n_train, [load.measure(f"{spec.name} lth_jax sequential K={K}",
                                                                epoch(*ticket_states)) for _ in range(repeats)],
                                derived=False)
  out["vmap_speedup"] = _ratio(out["vmap"].get("img_s"), out["sequential"]["img_s"])
  if "img_s" in out["vmap"]:
    print(f"  vmapped K={K} {out['vmap']['img_s']:,.1f} img/s vs sequential {out['sequential']['img_s']:,.1f}",
          flush=True)
  else:
    print(f"  vmapped K={K} skipped: {out['vmap']['skipped']}", flush=True)

  # 3. The loops: a dense epoch of the first `loop_steps` batches as one lax.scan vs one step per batch.
  n = spec.loop_steps * spec.batch_size
  out["loops"] = {"steps_per_epoch": spec.loop_steps, "images": n}
  for loop in ("scan", "steps"):
    t = train.Trainer(model, _opt_config(), spec.batch_size, spec.loop_steps, epochs=10, loop=loop)
    state = t.init_state(params, batch_stats, ones, jax.random.key(1))
    if loop == "scan":   # compiled ahead of time: a convnet's scan epoch is too slow on CPU to warm up with
      start = time.perf_counter()
      fn, extra = t._train_epoch.lower(state, x[:n], y[:n]).compile(), {"compile_s": time.perf_counter() - start}
    else:
      fn, extra = t.train_epoch, {"first_epoch_s": load.measure(f"{spec.name} lth_jax loop=steps warm-up epoch",
                                                                _epochs(t.train_epoch, x[:n], y[:n], state))}
    measure = lambda: load.measure(f"{spec.name} lth_jax loop={loop} epoch", _epochs(fn, x[:n], y[:n], state))
    out["loops"][loop] = _figure(n, _until(measure, spec.repeats, LOOP_DIAGNOSTIC_S), **extra)
  out["loops"]["scan_over_steps"] = out["loops"]["scan"]["img_s"] / out["loops"]["steps"]["img_s"]
  print(f"  loops on {spec.loop_steps} batches: scan {out['loops']['scan']['img_s']:,.1f} img/s, steps "
        f"{out['loops']['steps']['img_s']:,.1f} img/s", flush=True)
  return out


# -- PyTorch peer ---------------------------------------------------------------------------------


def _torch_models():
  """LeNet-300-100, Conv-6 and ResNet-20 as the seed projects write them (NCHW)."""
  from torch import nn

  def lenet():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))

  def conv6():
    layers, width = [], 3
    for i, f in enumerate((64, 64, 128, 128, 256, 256)):
      layers += [nn.Conv2d(width, f, 3, padding=1), nn.ReLU()]
      width = f
      if i % 2 == 1:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(256 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 10))

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.shortcut = nn.Sequential()
      if stride != 1 or cin != cout:   # 1x1 conv + BN projection, as lth_jax's resnet20
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
      out = nn.functional.relu(self.bn1(self.conv1(x)))
      return nn.functional.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

  class ResNet20(nn.Module):
    def __init__(self):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
      blocks, cin = [], 16
      for s, width in enumerate((16, 32, 64)):
        for b in range(3):
          blocks.append(Block(cin, width, 2 if s > 0 and b == 0 else 1))
          cin = width
      self.blocks = nn.Sequential(*blocks)
      self.output = nn.Linear(64, 10)

    def forward(self, x):
      return self.output(self.blocks(self.stem(x)).mean((2, 3)))

  return {"lenet300_100": lenet, "conv6": conv6, "resnet20": ResNet20}


def bench_torch(spec: Spec, load: Load, device: str) -> dict:
  import torch
  from torch.nn.utils import prune

  torch.manual_seed(0)
  x_np, y_np = _data(spec)
  x = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2))).to(device)   # NCHW
  y = torch.from_numpy(y_np.astype(np.int64)).to(device)
  steps = spec.n_train // spec.batch_size
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  out, runs = {}, {}
  for kind in ("dense", "masked"):
    model = _torch_models()[spec.name]().to(device)
    out["params"] = sum(p.numel() for p in model.parameters())
    if kind == "masked":
      prunable = [(m, "weight") for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
      prune.global_unstructured(prunable, pruning_method=prune.L1Unstructured, amount=SPARSITY)
      pruned = sum(int((m.weight_mask == 0).sum()) for m, _ in prunable)
      out["sparsity"] = pruned / sum(m.weight_mask.numel() for m, _ in prunable)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def epoch(model=model, opt=opt, steps=steps):
      model.train()
      order = torch.randperm(spec.n_train, device=device)
      for i in range(steps):
        idx = order[i * spec.batch_size:(i + 1) * spec.batch_size]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
      sync()

    epoch(steps=min(steps, 2))   # oneDNN builds its primitives on the first pass
    runs[kind] = epoch
  times = {"dense": [], "masked": []}
  repeats = min(max(spec.repeats, 3), 5)
  for r in range(repeats):
    for kind in (("dense", "masked") if r % 2 == 0 else ("masked", "dense")):
      times[kind].append(load.measure(f"{spec.name} torch {kind} epoch", runs[kind]))
  out["dense"], out["masked"] = (_figure(spec.n_train, times[k]) for k in ("dense", "masked"))
  out["masked_over_dense"] = _paired_ratio(times)
  out["threads"] = torch.get_num_threads()
  # One thread too: OpenMP's barriers stall when other processes hold the cores, so on a shared machine
  # the prescribed threads=cores can be the slower choice; this says how much of the gap that is.
  torch.set_num_threads(1)
  runs["masked"](steps=min(steps, 2))
  out["masked_1thread"] = _figure(spec.n_train, [load.measure(f"{spec.name} torch masked epoch, 1 thread",
                                                              runs["masked"]) for _ in range(repeats)])
  torch.set_num_threads(out["threads"])
  print(f"  torch dense {out['dense']['img_s']:,.1f} img/s, masked {out['masked']['img_s']:,.1f} img/s "
        f"({out['threads']} threads); masked, 1 thread {out['masked_1thread']['img_s']:,.1f} img/s", flush=True)
  return out


def conv_probe(load: Load, torch_device: str | None, batch: int = 64) -> dict:
  """ResNet-20's first-stage conv (16->16, 3x3, 32x32, batch 64): forward and weight gradient alone.

  Outside any loop; says how much of a convnet's gap is the convolution kernels themselves.
  """
  x_np = np.random.default_rng(0).standard_normal((batch, 32, 32, 16), dtype=np.float32)
  conv = flax.linen.Conv(16, (3, 3), padding="SAME", use_bias=False)
  x = jnp.asarray(x_np)
  params = conv.init(jax.random.key(0), x)
  forward = jax.jit(lambda p, x: conv.apply(p, x).sum())
  weight_grad = jax.jit(jax.grad(lambda p, x: conv.apply(p, x).sum()))

  def in_scan(p, xs):   # the same weight gradient inside a 2-trip scan, as in a training epoch
    return jax.lax.scan(lambda p, xb: (jax.tree.map(lambda a, g: a - 0.01 * g, p, weight_grad(p, xb)), None),
                        p, xs)[0]

  xs = jnp.stack([x, x])
  scan_grad = jax.jit(in_scan)
  out = {"shape": [batch, 32, 32, 16], "kernel": [3, 3, 16, 16], "torch_threads": None}
  for name, fn, args, per in (("jax_forward_ms", forward, (params, x), 1),
                              ("jax_weight_grad_ms", weight_grad, (params, x), 1),
                              ("jax_weight_grad_in_scan_ms", scan_grad, (params, xs), 2)):
    jax.block_until_ready(fn(*args))
    out[name] = 1e3 * statistics.median(
        [load.measure(f"conv probe {name}", lambda: jax.block_until_ready(fn(*args))) for _ in range(3)]) / per
  if torch_device:
    import torch
    out["torch_threads"] = torch.get_num_threads()
    tx = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2))).to(torch_device)
    tconv = torch.nn.Conv2d(16, 16, 3, padding=1, bias=False).to(torch_device)
    sync = torch.cuda.synchronize if torch_device == "cuda" else (lambda: None)

    def t_forward():
      with torch.no_grad():
        tconv(tx).sum()
      sync()

    def t_weight_grad():
      tconv.zero_grad()
      tconv(tx).sum().backward()   # input needs no grad: this is forward + weight gradient
      sync()

    for name, fn in (("torch_forward_ms", t_forward), ("torch_forward_weight_grad_ms", t_weight_grad)):
      fn()
      out[name] = 1e3 * statistics.median([load.measure(f"conv probe {name}", fn) for _ in range(3)])
  return out


# -- end to end -----------------------------------------------------------------------------------


def end_to_end(load: Load, quick: bool) -> dict:
  """configs/default.py (the digits MLP) with method=iterative through build + methods.run."""
  from lth_jax import experiment, methods

  config = config_lib.base()   # what configs/default.py returns
  config.method = "iterative"
  config.iterative.rounds = 2 if quick else 3
  config.train.epochs = 2 if quick else 10
  config.train.log_every = 0
  runs = []

  def go():
    exp = experiment.build(config)
    methods.run(exp, lambda record, state, rewind: runs.append(record["method"]))  # keeps nothing else

  seconds = load.measure("end-to-end iterative", go)
  print(f"  end-to-end: {len(runs)} runs in {seconds:.1f}s", flush=True)
  return {"config": "configs/default.py (digits, MLP 128-64) with --config.method=iterative "
                    f"--config.iterative.rounds={config.iterative.rounds} --config.train.epochs={config.train.epochs}",
          "runs": len(runs), "epochs_trained": config.train.epochs * len(runs), "wall_s": seconds}


# -- report ---------------------------------------------------------------------------------------


def _versions() -> dict:
  import flax as flax_pkg
  import jaxlib
  out = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
         "flax": flax_pkg.__version__, "optax": optax.__version__, "numpy": np.__version__}
  if importlib.util.find_spec("torch"):
    import torch
    out["torch"] = torch.__version__
  return out


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _targets(results: dict) -> list:
  out = []
  for name, m in results["models"].items():
    r = m["lth_jax"]["masked_over_dense"]
    out.append({"target": f"{FULL[name].label}: lth_jax masked within 3% of dense (masked/dense >= "
                          f"{1 - MASKED_TARGET:g})", "value": round(r, 3), "met": r >= 1 - MASKED_TARGET})
  lenet = results["models"].get("lenet300_100", {})
  if lenet.get("lth_jax_over_torch") is not None:
    r = lenet["lth_jax_over_torch"]
    out.append({"target": f"LeNet-300-100 (CPU): lth_jax masked >= 1.5x torch masked ({lenet['torch']['threads']} "
                          "threads)", "value": round(r, 2), "met": r >= LENET_TORCH_TARGET})
    r = lenet["lth_jax_over_torch_best"]
    out.append({"target": "LeNet-300-100 (CPU): lth_jax masked >= 1.5x torch masked at its faster thread count",
                "value": round(r, 2), "met": r >= LENET_TORCH_TARGET})
  resnet = results["models"].get("resnet20", {})
  if resnet.get("lth_jax_over_torch") is not None:
    out.append({"target": "ResNet-20: lth_jax masked / torch masked (reported, no target)",
                "value": round(resnet["lth_jax_over_torch"], 3), "met": None})
  return out


def _num(v, ratio=False) -> str:
  if v is None:
    return "–"
  if ratio:
    return f"{v:.2f}" if v >= 0.1 else f"{v:.3f}"
  return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def _duration(seconds: float) -> str:
  return f"{seconds:.1f} s" if seconds >= 1 else f"{1e3 * seconds:.2f} ms"


def _batched_op(name: str) -> str:
  return "batched matmuls" if name == "lenet300_100" else "grouped convolutions"


def _analysis(results: dict) -> list:
  """The 'what limits it' paragraphs, from the measured figures."""
  lines, probe, cpu = [], results.get("conv_probe"), results["meta"]["platform"] == "cpu"
  for name, m in results["models"].items():
    label, j, t, b, convnet = FULL[name].label, m["lth_jax"], m.get("torch"), m["batch_size"], name != "lenet300_100"
    loops, r = j["loops"], j["loops"]["scan_over_steps"]
    text = f"per batch of {b}: {_duration(b / j['masked']['img_s'])} in lth_jax masked (loop: {j['loop']})"
    if t:
      text += (f", {_duration(b / t['masked']['img_s'])} in torch masked with {t['threads']} threads and "
               f"{_duration(b / t['masked_1thread']['img_s'])} with 1")
    text += (f". On the loop diagnostic's {loops['steps_per_epoch']}-batch epoch one `lax.scan` runs at "
             f"{_num(r, True)}x the speed of one jitted step per batch")
    if r < 0.5:
      text += ": the scan's while loop is the limit"
      if cpu and convnet:
        text += (" (inside it XLA CPU emits generic loop kernels for the convolutions instead of calling its conv "
                 "routine, jax-ml/jax#12868" + (f"; the conv probe's weight gradient takes "
                                                 f"{probe['jax_weight_grad_ms']:.1f} ms alone, "
                                                 f"{probe['jax_weight_grad_in_scan_ms']:.1f} ms inside a scan"
                                                 if probe else "") + ")")
    elif r < 0.9:
      text += ": the scan is the slower loop"
    elif r <= 1.1:
      text += ": within 10%, so dispatching each step from Python costs little next to a batch's work"
    else:
      text += ": the scan saves the per-step dispatch"
    faster = "scan" if r > 1 else "steps"
    text += (f"; loop=\"auto\" picked {j['loop']}, loop=\"{faster}\" is faster here." if j["loop"] != faster and
             abs(r - 1) > 0.1 else ".")
    g = m.get("lth_jax_over_torch_best")
    if g is not None:
      if g > 1.2:
        text += f" lth_jax masked is {g:.1f}x as fast as torch masked at its faster thread count"
        text += (": the step (three small GEMMs) is compiled with the mask and optimizer arithmetic into one "
                 "program, while torch runs it op by op (autograd, SGD's per-parameter loop, the prune hooks)."
                 if not convnet else ".")
      elif g < 1 / 1.2:
        text += f" Torch masked at its faster thread count is {1 / g:.1f}x as fast as lth_jax masked"
        text += (f" (conv probe: one conv's forward + weight gradient takes "
                 f"{probe['jax_forward_ms'] + probe['jax_weight_grad_ms']:.1f} ms in XLA, "
                 f"{probe['torch_forward_weight_grad_ms']:.1f} ms in torch)."
                 if convnet and probe and "torch_forward_ms" in probe else ".")
      else:
        text += " lth_jax masked and torch masked at its faster thread count are within 20%."
    text += (f" Masked/dense: {j['masked_over_dense']:.2f} in lth_jax (the same programs, the masks multiplied in "
             "either way)" + (f", {t['masked_over_dense']:.2f} in torch (prune hooks recompute weight_orig * mask "
                              "every forward)." if t else "."))
    if t and t["masked_1thread"]["img_s"] > 1.2 * t["masked"]["img_s"]:
      text += (f" Torch with {t['threads']} threads is {t['masked_1thread']['img_s'] / t['masked']['img_s']:.1f}x "
               "slower than with 1: its OpenMP regions wait at barriers for any thread another process has "
               "pre-empted; the threads=cores figure needs an idle machine.")
    lines.append(f"- **{label}** — {text}")
    if "img_s" in j["vmap"]:
      v = j["vmap_speedup"]
      lines.append(f"  Vmapping K={K} tickets gives {v:.2f}x the throughput of training them one after another"
                   + (": one program of K-times-wider operations keeps the cores busier than K small ones." if v > 1.05
                      else "." if v > 0.95 else
                      f": the batched program ({_batched_op(name)} over the ticket axis) is slower than K plain "
                      "ones."))
    else:
      lines.append(f"  Vmapped K={K} not measured: {j['vmap']['skipped']} (raise it to measure).")
  if probe:
    text = (f"- **Conv probe** (ResNet-20's 16->16 3x3 conv at 32x32, batch 64, "
            f"{probe['torch_threads'] or '–'} torch threads): XLA forward {probe['jax_forward_ms']:.1f} ms, "
            f"weight gradient {probe['jax_weight_grad_ms']:.1f} ms alone and "
            f"{probe['jax_weight_grad_in_scan_ms']:.1f} ms inside a scan")
    if "torch_forward_ms" in probe:
      text += (f"; torch forward {probe['torch_forward_ms']:.1f} ms, forward + weight gradient "
               f"{probe['torch_forward_weight_grad_ms']:.1f} ms")
    lines.append(text + ".")
  e2e = results.get("end_to_end")
  if e2e:
    lines.append(f"- **End to end** ({e2e['runs']} runs, {e2e['epochs_trained']} epochs of training): "
                 f"{e2e['wall_s']:.1f}s, which includes compiling each trainer and every run's evaluation "
                 "(calibration, OOD, similarity figures), not only training.")
  return lines


def write_markdown(results: dict, path: str) -> None:
  meta, models_, lines = results["meta"], results["models"], []
  title = "# lth_jax training throughput" + (" (quick smoke mode: figures not comparable)" if results["quick"] else "")
  lines += [title,
            "", f"`{meta['command']}` — {meta['date']}", "",
            f"Device: {meta['device']} · CPU: {meta['cpu_model']}, {meta['cpu_count']} cores · "
            + " · ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
  loops = sorted({m["lth_jax"]["loop"] for m in models_.values()})
  lines += ["Synthetic data of the real shapes, on the device before timing; images/s is the median over timed "
            "epochs after untimed warm-up epochs (the first compiles); masked/dense is the median over back-to-back "
            "(dense, masked) pairs. lth_jax epochs are `Trainer.train_epoch` with the default loop "
            f"(loop: {', '.join(loops)}), each on its own copy of the state; sequential K={K} is {K} single-ticket "
            "epochs one after another, vmapped one batched epoch of all. Timed epochs per figure: " + "; ".join(
                f"{FULL[n].label}: {m['images']:,} images/epoch, batch {m['batch_size']} "
                f"({m['lth_jax']['steps_per_epoch']} steps), {m['repeats']} for dense and masked, "
                f"{min(m['repeats'], 5)} for K={K}, {min(max(m['repeats'], 3), 5)} for torch"
                for n, m in models_.items()) + f". Masks: {SPARSITY:.0%} global magnitude over every "
            f"conv and dense kernel in both frameworks; K={K} tickets each have their own init and mask."
            + (f" Torch runs with torch.set_num_threads({meta['torch_threads']}) unless a column says otherwise."
               if meta["torch_threads"] else ""), ""]
  samples = results["load"]["samples"]
  if results["load"]["warnings"]:
    others = [s["others_cpu_share"] for s in samples if s["others_cpu_share"] is not None]
    lines += [f"**Noisy:** the 1-minute load average was above {LOAD_LIMIT} before "
              f"{len(results['load']['warnings'])} of {len(samples)} measurements (max "
              f"{max(s['load_avg_1m'] for s in samples):.2f}; it counts this benchmark's own threads too). Other "
              "processes took " + (f"{statistics.median(others):.0%} of the CPUs (median over measurements, max "
                                   f"{max(others):.0%})" if others else "an unknown share of the CPUs") + ".", ""]
  lines += [f"| model | lth_jax dense img/s | lth_jax masked img/s | masked/dense | vmapped K={K} img/s (total) | "
            f"sequential K={K} img/s | vmap speedup | torch masked img/s | lth_jax/torch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, m in models_.items():
    j, t = m["lth_jax"], m.get("torch")
    seq = _num(j["sequential"]["img_s"]) + (" (derived)" if j["sequential"].get("derived") else "")
    vmap = _num(j["vmap"]["img_s"]) if "img_s" in j["vmap"] else "skipped"
    lines.append(f"| {FULL[name].label} | {_num(j['dense']['img_s'])} | {_num(j['masked']['img_s'])} | "
                 f"{_num(j['masked_over_dense'], True)} | {vmap} | {seq} | {_num(j['vmap_speedup'], True)} | "
                 f"{_num(t['masked']['img_s']) if t else '–'} | {_num(m.get('lth_jax_over_torch'), True)} |")
  lines += ["", "Diagnostics. First epoch: lth_jax's first warm-up epoch, compiling included. Loops: a dense epoch of "
            "the first batches (loop epoch) as one `lax.scan` (loop=\"scan\", compiled ahead of time, timed without "
            "warm-up) vs one jitted step per batch (loop=\"steps\"); scan / steps is their throughput ratio.", "",
            "| model | first epoch s | loop epoch | scan img/s | steps img/s | scan / steps | torch dense img/s | "
            "torch masked/dense | torch masked, 1 thread, img/s | lth_jax / torch at its faster thread count | "
            "params (jax / torch) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, m in models_.items():
    j, t = m["lth_jax"], m.get("torch")
    loops = j["loops"]
    cells = [FULL[name].label, f"{j['first_epoch_s']:.1f}",
             f"{loops['images']:,} images ({loops['steps_per_epoch']} batches)", _num(loops["scan"]["img_s"]),
             _num(loops["steps"]["img_s"]), _num(loops["scan_over_steps"], True)]
    if t:
      cells += [_num(t["dense"]["img_s"]), _num(t["masked_over_dense"], True), _num(t["masked_1thread"]["img_s"]),
                _num(m["lth_jax_over_torch_best"], True), f"{j['params']:,} / {t['params']:,}"]
    else:
      cells += ["–"] * 4 + [f"{j['params']:,} / –"]
    lines.append("| " + " | ".join(cells) + " |")
  e2e = results.get("end_to_end")
  if e2e:
    lines += ["", f"End to end: {e2e['config']}: {e2e['runs']} runs, {e2e['wall_s']:.1f}s wall."]
  lines += ["", "Targets:", ""]
  for t in results["targets"]:
    verdict = "reported" if t["met"] is None else ("met" if t["met"] else "NOT met")
    lines.append(f"- {t['target']}: {t['value']} — {verdict}")
  if results.get("skipped"):
    lines += [""] + [f"- skipped: {s}" for s in results["skipped"]]
  lines += ["", "## What limits it", ""] + _analysis(results)
  lines += ["", f"Total benchmark wall time {results['wall_s']:.0f}s."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


# -- driver ---------------------------------------------------------------------------------------


def run(model_names=tuple(FULL), quick: bool = False, with_torch: bool = True, with_end_to_end: bool = True,
        cap_s: float | None = None, out_dir: str | None = None, command: str = "") -> dict:
  """Runs the benchmark; returns the results dict (and writes OUT/results.json and .md when out_dir)."""
  started, load = time.perf_counter(), Load()
  specs = QUICK if quick else FULL
  cap_s = cap_s if cap_s is not None else (20.0 if quick else 120.0)
  skipped = []
  if with_torch and not importlib.util.find_spec("torch"):
    with_torch = False
    skipped.append("the PyTorch peer: torch is not installed (pip install 'lth_jax[bench]')")
  device = jax.devices()[0]
  torch_device = None
  if with_torch:
    import torch
    torch.set_num_threads(os.cpu_count())
    torch_device = "cuda" if device.platform == "gpu" and torch.cuda.is_available() else "cpu"
    if (torch_device == "cuda") != (device.platform == "gpu"):
      skipped.append(f"same device: jax runs on {device.platform}, torch on {torch_device}")
  results = {"quick": quick, "cap_s": cap_s, "models": {}, "skipped": skipped,
             "meta": {"command": command or "lth_jax.bench.run()", "date": datetime.datetime.now(
                 datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": f"{device} ({device.device_kind})",
                      "platform": device.platform,
                      "torch_device": torch_device, "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
                      "torch_threads": os.cpu_count() if with_torch else None, "versions": _versions(),
                      "load_avg_start": os.getloadavg()}}
  for name in model_names:
    spec = specs[name]
    print(f"{spec.label}: {spec.n_train} images/epoch, batch {spec.batch_size}", flush=True)
    entry = {"images": spec.n_train, "batch_size": spec.batch_size, "repeats": spec.repeats,
             "input_shape": list(spec.shape), "lth_jax": bench_lth_jax(spec, load, cap_s)}
    if with_torch:
      entry["torch"] = bench_torch(spec, load, torch_device)
      entry["lth_jax_over_torch"] = entry["lth_jax"]["masked"]["img_s"] / entry["torch"]["masked"]["img_s"]
      entry["lth_jax_over_torch_best"] = entry["lth_jax"]["masked"]["img_s"] / max(
          entry["torch"]["masked"]["img_s"], entry["torch"]["masked_1thread"]["img_s"])
    results["models"][name] = entry
  if any(n != "lenet300_100" for n in model_names):
    print("conv probe", flush=True)
    results["conv_probe"] = conv_probe(load, torch_device)
  if with_end_to_end:
    print("end to end", flush=True)
    results["end_to_end"] = end_to_end(load, quick)
  results["targets"] = _targets(results)
  results["load"] = {"limit": LOAD_LIMIT, "warnings": load.warnings, "samples": load.samples,
                     "load_avg_end": os.getloadavg()}
  results["wall_s"] = time.perf_counter() - started
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
      json.dump(results, f, indent=1, default=float)
    write_markdown(results, os.path.join(out_dir, "results.md"))
  for t in results["targets"]:
    print(f"{t['target']}: {t['value']} — {'reported' if t['met'] is None else 'met' if t['met'] else 'NOT met'}")
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m lth_jax.bench", description=__doc__.split("\n\n")[0])
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
  command = " ".join(["python -m lth_jax.bench", *(argv if argv is not None else sys.argv[1:])])
  run(names, args.quick, not args.no_torch, not args.no_end_to_end, args.cap_s, args.out, command)


if __name__ == "__main__":
  main()
