"""Training throughput: lth_jax dense vs masked, vmapped tickets vs one after another, and a PyTorch peer.

  python -m lth_jax.bench [--out results/bench_cpu] [--quick] [--models lenet300_100,conv6,resnet20]

Everything runs in one process on one device, on synthetic data of the real shapes (MNIST 28x28x1 for
LeNet-300-100, CIFAR 32x32x3 for Conv-6 and ResNet-20) that lives on the device before timing starts, as
`experiment.build` puts it there. A figure is images per second: the median over timed epochs, each
ended by `block_until_ready`, after the program was compiled (ahead of time, so compile time is reported
on its own and never timed) and, where an epoch is cheap, one warm-up epoch.

1. lth_jax dense (all-ones masks) vs masked at 80% global magnitude sparsity: the same compiled
   `Trainer._train_epoch` on other mask values, timed alternately so both see the same background load.
2. K=8 tickets in one vmapped program (`Trainer._train_epoch_many`, what `fit_many` runs) vs the same 8
   trained one after another with `_train_epoch`.
3. The seeds' PyTorch loop: the same architectures in torch, masks by `torch.nn.utils.prune`
   (global L1Unstructured, amount=0.8, hooks left on as the seeds train), SGD momentum 0.9, data already
   in memory as tensors and no DataLoader, so the comparison is of the training step alone.
4. End-to-end wall time of a small iterative-pruning run through `experiment.build` + `methods.run`.

Diagnostics beside the table: the same `_train_step` jitted alone and called once per batch from Python
(no `lax.scan`), and one 3x3 convolution's forward and weight gradient in both frameworks, which is
where the convnets' gaps come from on CPU. Results go to OUT/results.json and OUT/results.md.
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
from lth_jax import masks as masks_lib
from lth_jax import models
from lth_jax import pruning
from lth_jax import train

SPARSITY = 0.8
K = 8
LOAD_LIMIT = 1.5       # 1-minute load average above which a measurement is flagged noisy
MASKED_TARGET = 0.03   # masked within 3% of dense
LENET_TORCH_TARGET = 1.5


@dataclasses.dataclass(frozen=True)
class Spec:
  """One model's benchmark: input shape, batch and how many images an epoch holds."""
  name: str
  label: str
  shape: tuple          # one image, HWC
  batch_size: int
  n_train: int          # images per epoch
  repeats: int          # timed epochs (the figure is their median)
  warmup: int           # untimed epochs after compiling


# Convnet epochs are 2 batches: the fewest that keep the epoch a real loop (XLA removes a one-trip
# loop), because a scan epoch of a convnet runs at a few images/s on XLA CPU (see the diagnostics).
FULL = {
    "lenet300_100": Spec("lenet300_100", "LeNet-300-100", (28, 28, 1), 60, 6000, 5, 1),
    "conv6": Spec("conv6", "Conv-6", (32, 32, 3), 64, 128, 1, 0),
    "resnet20": Spec("resnet20", "ResNet-20", (32, 32, 3), 64, 128, 1, 0),
}
# Smoke mode: the same code paths on tiny epochs; its figures are not comparable.
QUICK = {
    "lenet300_100": Spec("lenet300_100", "LeNet-300-100", (28, 28, 1), 60, 600, 3, 1),
    "conv6": Spec("conv6", "Conv-6", (32, 32, 3), 2, 4, 1, 0),
    "resnet20": Spec("resnet20", "ResNet-20", (32, 32, 3), 2, 4, 1, 0),
}
QUICK_MODELS = ("lenet300_100", "resnet20")


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
    if before and after:
      wall = after[0] - before[0]
      others = max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / (wall * os.cpu_count()))
    self.samples.append({"what": what, "load_avg_1m": round(load, 2), "seconds": seconds,
                         "others_cpu_share": None if others is None else round(others, 3)})
    return seconds


def _figure(images: int, seconds: list, **extra) -> dict:
  """Images/s from the median epoch time."""
  return {"img_s": images / statistics.median(seconds), "epoch_s": seconds, **extra}


def _ratio(a, b):
  return a / b if a and b else None


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


def bench_lth_jax(spec: Spec, load: Load, cap_s: float) -> dict:
  model = models.get(spec.name, num_classes=10)
  x_np, y_np = _data(spec)
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)   # on the device before timing, as experiment.build does
  steps = train.steps_per_epoch(spec.n_train, spec.batch_size)
  trainer = train.Trainer(model, _opt_config(), spec.batch_size, steps, epochs=10)
  init = jax.jit(functools.partial(model.init, train=False))   # one compile, not one per eager op
  params, batch_stats, masks, which = _ticket(init, x, jax.random.key(0))
  dense = trainer.init_state(params, batch_stats, masks_lib.init(params), jax.random.key(1))
  masked = trainer.init_state(params, batch_stats, masks, jax.random.key(1))
  out = {"params": sum(p.size for p in jax.tree.leaves(params)), "sparsity": masks_lib.sparsity(masks, which),
         "steps_per_epoch": steps}

  # 1. Dense and masked are one program (the mask multiply is always there): compile once.
  start = time.perf_counter()
  epoch = trainer._train_epoch.lower(dense, x, y).compile()
  out["compile_s"] = time.perf_counter() - start
  run = lambda state: lambda: jax.block_until_ready(epoch(state, x, y))
  for _ in range(spec.warmup):
    run(dense)()
    run(masked)()
  times = {"dense": [], "masked": []}
  for r in range(spec.repeats):
    # Alternate which goes first, so a drift in background load hits both alike.
    for kind in (("dense", "masked") if r % 2 == 0 else ("masked", "dense")):
      times[kind].append(load.measure(f"{spec.name} lth_jax {kind} epoch",
                                      run(dense if kind == "dense" else masked)))
  out["dense"], out["masked"] = (_figure(spec.n_train, times[k]) for k in ("dense", "masked"))
  out["masked_over_dense"] = out["masked"]["img_s"] / out["dense"]["img_s"]
  epoch_s = statistics.median(times["masked"])
  print(f"  lth_jax dense {out['dense']['img_s']:,.1f} img/s, masked {out['masked']['img_s']:,.1f} img/s "
        f"(compile {out['compile_s']:.1f}s)", flush=True)

  # Diagnostic: the same step jitted alone and driven from Python, batch by batch (no lax.scan).
  step = jax.jit(trainer._train_step)
  batches = [(x[i * spec.batch_size:(i + 1) * spec.batch_size], y[i * spec.batch_size:(i + 1) * spec.batch_size])
             for i in range(steps)]

  def stepwise():
    state = dense
    for batch in batches:
      state, _ = step(state, batch)
    jax.block_until_ready(state)

  stepwise()   # compiles and warms up
  step_times = [load.measure(f"{spec.name} lth_jax step-jit epoch", stepwise)
                for _ in range(max(spec.repeats, 2))]
  out["step_jit_dense"] = _figure(spec.n_train, step_times)
  out["scan_over_step_jit"] = out["dense"]["img_s"] / out["step_jit_dense"]["img_s"]
  print(f"  step-jit (no scan) dense {out['step_jit_dense']['img_s']:,.1f} img/s", flush=True)

  # 2. K tickets (own init, own mask): one vmapped program vs one after another.
  tickets = [_ticket(init, x, jax.random.key(100 + i)) for i in range(K)]
  states = [trainer.init_state(p, b, m, jax.random.key(200 + i)) for i, (p, b, m, _) in enumerate(tickets)]
  estimate = K * epoch_s   # what one vmapped epoch costs if vmapping gains nothing
  if estimate * (spec.warmup + spec.repeats) > cap_s:
    out["vmap"] = {"skipped": f"estimated {estimate:.0f}s an epoch (K x the single-ticket epoch) "
                              f"x {spec.warmup + spec.repeats} exceeds --cap_s={cap_s:g}"}
  else:
    stacked = train._stack(states)
    start = time.perf_counter()
    many = trainer._train_epoch_many.lower(stacked, x, y).compile()
    compile_s = time.perf_counter() - start
    run_many = lambda: jax.block_until_ready(many(stacked, x, y))
    for _ in range(spec.warmup):
      run_many()
    out["vmap"] = _figure(K * spec.n_train, [load.measure(f"{spec.name} lth_jax vmapped K={K} epoch", run_many)
                                             for _ in range(spec.repeats)], compile_s=compile_s)
  if estimate * spec.repeats > cap_s:
    # The same compiled program K times over: its throughput is the masked figure by construction.
    out["sequential"] = {"img_s": out["masked"]["img_s"], "derived": True,
                         "note": f"K x {estimate / K:.0f}s epochs exceed --cap_s; taken from the masked figure"}
  else:

    def one_after_another():
      for state in states:
        jax.block_until_ready(epoch(state, x, y))   # fit blocks at every epoch end to log its metrics

    out["sequential"] = _figure(K * spec.n_train, [load.measure(f"{spec.name} lth_jax sequential K={K}",
                                                                one_after_another) for _ in range(spec.repeats)],
                                derived=False)
  out["vmap_speedup"] = _ratio(out["vmap"].get("img_s"), out["sequential"]["img_s"])
  if "img_s" in out["vmap"]:
    print(f"  vmapped K={K} {out['vmap']['img_s']:,.1f} img/s vs sequential {out['sequential']['img_s']:,.1f}",
          flush=True)
  else:
    print(f"  vmapped K={K} skipped: {out['vmap']['skipped']}", flush=True)
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

    def epoch(model=model, opt=opt):
      model.train()
      order = torch.randperm(spec.n_train, device=device)
      for i in range(steps):
        idx = order[i * spec.batch_size:(i + 1) * spec.batch_size]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
      sync()

    epoch()   # oneDNN builds its primitives on the first pass
    runs[kind] = epoch
  times = {"dense": [], "masked": []}
  for r in range(max(spec.repeats, 3)):   # torch epochs are cheap enough for three everywhere
    for kind in (("dense", "masked") if r % 2 == 0 else ("masked", "dense")):
      times[kind].append(load.measure(f"{spec.name} torch {kind} epoch", runs[kind]))
  out["dense"], out["masked"] = (_figure(spec.n_train, times[k]) for k in ("dense", "masked"))
  out["masked_over_dense"] = out["masked"]["img_s"] / out["dense"]["img_s"]
  print(f"  torch dense {out['dense']['img_s']:,.1f} img/s, masked {out['masked']['img_s']:,.1f} img/s", flush=True)
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
  out = {"shape": [batch, 32, 32, 16], "kernel": [3, 3, 16, 16]}
  for name, fn, args, per in (("jax_forward_ms", forward, (params, x), 1),
                              ("jax_weight_grad_ms", weight_grad, (params, x), 1),
                              ("jax_weight_grad_in_scan_ms", scan_grad, (params, xs), 2)):
    jax.block_until_ready(fn(*args))
    out[name] = 1e3 * statistics.median(
        [load.measure(f"conv probe {name}", lambda: jax.block_until_ready(fn(*args))) for _ in range(3)]) / per
  if torch_device:
    import torch
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
    out.append({"target": f"{FULL[name].label}: lth_jax masked within 3% of dense", "value": round(r, 3),
                "met": abs(r - 1) <= MASKED_TARGET})
  lenet = results["models"].get("lenet300_100", {})
  if lenet.get("lth_jax_over_torch") is not None:
    r = lenet["lth_jax_over_torch"]
    out.append({"target": "LeNet-300-100 (CPU): lth_jax masked >= 1.5x torch masked", "value": round(r, 2),
                "met": r >= LENET_TORCH_TARGET})
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


def _analysis(results: dict) -> list:
  """The 'what limits it' paragraph, from the measured figures."""
  lines = []
  for name, m in results["models"].items():
    label, j, t = FULL[name].label, m["lth_jax"], m.get("torch")
    scan_ms = 1e3 / j["dense"]["img_s"] * m["batch_size"]
    step_ms = 1e3 / j["step_jit_dense"]["img_s"] * m["batch_size"]
    torch_ms = 1e3 / t["masked"]["img_s"] * m["batch_size"] if t else None
    per_step = (f"per batch of {m['batch_size']}: {scan_ms:.2f} ms in lth_jax's scan epoch, {step_ms:.2f} ms for the "
                f"same step jitted alone" + (f", {torch_ms:.2f} ms in torch (masked)" if t else ""))
    if j["scan_over_step_jit"] >= 0.8:
      why = (f"the scan epoch runs at {j['scan_over_step_jit']:.2f}x the speed of the step jitted alone, so dispatch "
             f"between steps is not what matters here: the step ({'three small GEMMs' if name == 'lenet300_100' else label}) "
             "is compiled with the mask and optimizer arithmetic into one program, while torch runs it eagerly op by op (autograd, "
             "SGD's per-parameter loop and, masked, the prune hooks' weight_orig * mask on every forward"
             + (f": torch masked/dense {t['masked_over_dense']:.2f})" if t else ")"))
    else:
      why = (f"the `lax.scan` epoch is the limit: the same step jitted alone runs {1 / j['scan_over_step_jit']:.0f}x "
             "faster. Inside the scan's while loop XLA CPU does not lower the convolutions to its Eigen conv "
             "routine but emits generic loop kernels (`conv_general_dilated.N_kernel` in a profile; the "
             "conv-in-loop slowdown of jax-ml/jax#12868), so masking costs nothing here and the convolutions "
             "cost everything")
      if t:
        gap = t["dense"]["img_s"] / j["step_jit_dense"]["img_s"]
        if gap > 1.2:
          why += (f"; even without the scan, torch's (oneDNN) dense step is {gap:.1f}x as fast as XLA's, mostly in "
                  "the convolutions' weight gradients (conv probe below)")
        else:
          why += f"; without the scan, XLA's step is {1 / gap:.1f}x as fast as torch's (oneDNN) dense step"

    lines.append(f"- **{label}** — {per_step}. {why[0].upper()}{why[1:]}.")
    if "img_s" in j["vmap"]:
      s = j["vmap_speedup"]
      lines.append(f"  Vmapping K={K} tickets gives {s:.2f}x the throughput of training them one after another"
                   + (": one program of 8x wider GEMMs keeps both cores busier than K small ones." if s > 1.05 else
                      "." if s > 0.95 else ": the batched program is slower than K separate ones here."))
    else:
      lines.append(f"  Vmapped K={K} not measured: {j['vmap']['skipped']} (raise it to measure). Vmapped over tickets, "
                   "each conv becomes a grouped convolution (feature_group_count=K), for which XLA CPU has no fast "
                   "kernel either.")
  probe = results.get("conv_probe")
  if probe:
    text = (f"- **Conv probe** (ResNet-20's 16->16 3x3 conv at 32x32, batch 64): XLA forward "
            f"{probe['jax_forward_ms']:.1f} ms, weight gradient {probe['jax_weight_grad_ms']:.1f} ms alone and "
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
  meta, lines = results["meta"], []
  lines += ["# lth_jax training throughput" + (" (quick smoke mode: figures not comparable)" if results["quick"] else ""),
            "", f"`{meta['command']}` — {meta['date']}", "",
            f"Device: {meta['device']} · CPU: {meta['cpu_model']}, {meta['cpu_count']} cores · "
            + " · ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
  lines += ["Synthetic data of the real shapes, on the device before timing; images/s is the median over timed "
            "epochs after compiling. " + "; ".join(
                f"{FULL[n].label}: {m['images']:,} images/epoch, batch {m['batch_size']} "
                f"({m['lth_jax']['steps_per_epoch']} steps), {m['repeats']} timed epoch(s)"
                for n, m in results["models"].items()) + f". Masks: {SPARSITY:.0%} global magnitude over every "
            f"conv and dense kernel in both frameworks; K={K} tickets each have their own init and mask.", ""]
  if results["load"]["warnings"]:
    worst = max(s["load_avg_1m"] for s in results["load"]["samples"])
    others = [s["others_cpu_share"] for s in results["load"]["samples"] if s["others_cpu_share"] is not None]
    lines += [f"**Noisy:** the 1-minute load average was above {LOAD_LIMIT} before "
              f"{len(results['load']['warnings'])} of {len(results['load']['samples'])} measurements (max "
              f"{worst:.2f}; it counts this benchmark's own threads too). Other processes took "
              + (f"{statistics.median(others):.0%} of the CPUs (median over measurements, max {max(others):.0%})"
                 if others else "an unknown share of the CPUs") + ".", ""]
  lines += ["| model | lth_jax dense img/s | lth_jax masked img/s | masked/dense | vmapped K=8 img/s (total) | "
            "sequential K=8 img/s | vmap speedup | torch masked img/s | lth_jax/torch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, m in results["models"].items():
    j, t = m["lth_jax"], m.get("torch")
    seq = _num(j["sequential"]["img_s"]) + (" (derived)" if j["sequential"].get("derived") else "")
    lines.append(f"| {FULL[name].label} | {_num(j['dense']['img_s'])} | {_num(j['masked']['img_s'])} | "
                 f"{_num(j['masked_over_dense'], True)} | {_num(j['vmap'].get('img_s')) if 'img_s' in j['vmap'] else 'skipped'} | "
                 f"{seq} | {_num(j['vmap_speedup'], True)} | {_num(t['masked']['img_s']) if t else '–'} | "
                 f"{_num(m.get('lth_jax_over_torch'), True)} |")
  lines += ["", "Diagnostics:", "",
            "| model | compile s | step-jit (no scan) dense img/s | scan / step-jit | torch dense img/s | "
            "torch masked/dense | params (jax / torch) |", "|---|---:|---:|---:|---:|---:|---:|"]
  for name, m in results["models"].items():
    j, t = m["lth_jax"], m.get("torch")
    torch_params = f"{t['params']:,}" if t else "–"
    lines.append(f"| {FULL[name].label} | {j['compile_s']:.1f} | {_num(j['step_jit_dense']['img_s'])} | "
                 f"{_num(j['scan_over_step_jit'], True)} | {_num(t['dense']['img_s']) if t else '–'} | "
                 f"{_num(t['masked_over_dense'], True) if t else '–'} | {j['params']:,} / {torch_params} |")
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
                      f"with --quick {', '.join(QUICK_MODELS)}, since each convnet costs ~30s of compiling)")
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
