"""What the benchmark's parts share: the specs, the targets, timing under load, figures and synthetic data."""

import dataclasses
import os
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np

from lth_jax.data import pixels

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


# The loop diagnostic's convnet epochs are 4 batches: a scan of them is a real loop (XLA removes a
# one-trip loop), and short enough to compile and time a few times over on 2 cores.
FULL = {
    "lenet300_100": Spec("lenet300_100", "LeNet-300-100", (28, 28, 1), 60, 6000, 15, 1, 100),
    "conv6": Spec("conv6", "Conv-6", (32, 32, 3), 64, 256, 3, 1, 4),
    "resnet20": Spec("resnet20", "ResNet-20", (32, 32, 3), 64, 640, 3, 1, 4),
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
    others = own = None
    wall = after[0] - before[0] if before and after else 0.0
    if wall > 0.5:   # /proc/stat counts in 10 ms ticks: shorter spans say nothing
      own = after[2] - before[2]   # this process's CPU seconds, every thread: what the load moves least
      others = max(0.0, ((after[1] - before[1]) - own) / (wall * os.cpu_count()))
    self.samples.append({"what": what, "load_avg_1m": round(load, 2), "seconds": seconds,
                         "others_cpu_share": None if others is None else round(others, 3),
                         "own_cpu_s": own})
    return seconds

  def summary(self) -> dict:
    """The load over every measurement so far: its range, the others' median CPU share, and a sentence."""
    loads = [s["load_avg_1m"] for s in self.samples]
    others = [s["others_cpu_share"] for s in self.samples if s["others_cpu_share"] is not None]
    out = {"load_avg_1m_range": [min(loads), max(loads)] if loads else None,
           "others_cpu_share_median": statistics.median(others) if others else None}
    shared = out["others_cpu_share_median"]
    out["load_note"] = (f"shared with other jobs: 1-minute load average {out['load_avg_1m_range']} during the run, "
                        f"other processes took a median {shared:.0%} of the CPU while timing"
                        if shared is not None else "load not measured")
    return out


def median_seconds(load: Load, what: str, call: Callable[[], object], repeats: int) -> float:
  """Median seconds of `repeats` calls of `call` (which blocks until its result is ready), after one warm-up."""
  call()
  return statistics.median(load.measure(what, call) for _ in range(repeats))


def epochs_on_copies(epoch_fn, x, y, *states):
  """A thunk for `Load.measure` running one epoch per state, one after another, on copies made now.

  An epoch donates (consumes) the state it is given: the copies let a state be timed again, and are
  made here so that copying is never timed.
  """
  fresh = [jax.block_until_ready(jax.tree.map(lambda a: a.copy(), s)) for s in states]

  def go():
    for state in fresh:
      jax.block_until_ready(epoch_fn(state, x, y))   # fit blocks at every epoch end to log its metrics
  return go


def figure(images: int, seconds: list, **extra) -> dict:
  """Images/s from the median epoch time."""
  return {"img_s": images / statistics.median(seconds), "epoch_s": seconds, **extra}


def ratio(a, b):
  """a / b, or None where either is missing (or zero)."""
  return a / b if a and b else None


def pair_ratios(times: dict, base: str = "dense", other: str = "masked") -> list:
  """other/base throughput (masked/dense by default) of each back-to-back pair of epoch times."""
  return [b / o for b, o in zip(times[base], times[other])]


def paired_ratio(times: dict, base: str = "dense", other: str = "masked") -> float:
  """`pair_ratios`' median: a pair shares its background load."""
  return statistics.median(pair_ratios(times, base, other))


# -- data -----------------------------------------------------------------------------------------


def synthetic_pixels(spec: Spec, seed: int = 0):
  """Random 8-bit images of the spec's shape and labels in 0..9, as numpy arrays (uint8, int32).

  lth_jax keeps them uint8 on the device and normalises inside jit, as `experiment.build` does with an
  8-bit source; the PyTorch peer gets the same images already normalised (`Normalizer.host`), as floats.
  """
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (spec.n_train, *spec.shape), dtype=np.uint8)
  y = rng.integers(0, 10, spec.n_train).astype(np.int32)
  return x, y


def normalizer(x) -> pixels.Normalizer:
  """Per-channel standardisation of `x`, as `experiment.build` makes it from the training images."""
  return pixels.Normalizer(*pixels.statistics(x, standardize=True))
