"""Range checks of the config sections no method owns: the top level, train, optimizer, finetune, metrics.

Each names its key and what is allowed, and runs before anything is trained or written (from
`lth_jax.experiment.validate`); the methods check their own sections (lth_jax.methods.registry).
What depends on the data's size is checked once the data are loaded (`lth_jax.experiment.check_ready`).
"""

import math
import os
import re

import ml_collections

from lth_jax.errors import check
from lth_jax.metrics import corruptions
from lth_jax.training import state

# A coordinator address: host (a name, an IPv4 address or a bracketed IPv6 one) and port.
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d+)$")
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"


def number(config: ml_collections.ConfigDict, key: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False, integer: bool = False, note: str = "") -> None:
  """config.<key> is a finite number (an integer if `integer`) in the interval from `low` to `high`.

  Args:
    config: the whole config.
    key: the dotted key, e.g. "optimizer.momentum".
    low, high: the bounds (None: unbounded); `low_open` / `high_open` exclude them.
    integer: the value must be an int.
    note: what the value means, added to the message.
  """
  value = config
  for part in key.split("."):
    value = value[part]
  kind = (int,) if integer else (int, float)
  ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  check(ok, lambda: f"config.{key}={value!r} must be {_interval(low, high, low_open, high_open, integer)}"
        f"{f' ({note})' if note else ''}")


def _interval(low, high, low_open, high_open, integer) -> str:
  what = "an integer" if integer else "a finite number"
  if low is not None and high is not None:
    return f"{what} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
  if low is not None:
    return f"{what} {'>' if low_open else '>='} {low:g}"
  if high is not None:
    return f"{what} {'<' if high_open else '<='} {high:g}"
  return what


def flag(config: ml_collections.ConfigDict, key: str) -> None:
  """config.<key> is True or False."""
  value = config
  for part in key.split("."):
    value = value[part]
  check(isinstance(value, bool), f"config.{key}={value!r}; allowed: True, False")


def validate(config: ml_collections.ConfigDict) -> None:
  """The sections below, each value against its allowed range."""
  number(config, "seed", 0, integer=True)
  for key in ("checkpoint.restart", "data.standardize", "log.tensorboard", "log.progress", "train.vmap",
              "optimizer.nesterov"):
    flag(config, key)
  validate_train(config)
  validate_images(config)
  validate_distributed(config)
  validate_optimizer(config)
  validate_metrics(config)


def validate_train(config: ml_collections.ConfigDict) -> None:
  number(config, "train.epochs", 1, integer=True)
  number(config, "train.batch_size", 1, integer=True)
  number(config, "train.eval_batch_size", 1, integer=True)
  number(config, "train.log_every", 0, integer=True, note="0 = quiet")
  number(config, "train.num_devices", 0, integer=True, note="0 = all")
  number(config, "finetune.epochs", 1, integer=True)
  number(config, "data.subset", 0, integer=True, note="0 = all")
  number(config, "data.test_subset", 0, integer=True, note="0 = all")


# Sources that can decode their images on demand (config.data.image_size > 0).
LAZY_SOURCES = ("image_folder", "tfds")


def validate_images(config: ml_collections.ConfigDict) -> None:
  """config.data's keys for images decoded on demand (lth_jax.data.lazy): ranges, and what they need."""
  data = config.data
  number(config, "data.image_size", 0, integer=True, note="0 = the images as they are")
  number(config, "data.resize_size", 0, integer=True, note="0 = image_size * 8/7")
  number(config, "data.workers", 0, integer=True, note="0 = one per CPU core")
  for key, high in (("crop_scale", 1.0), ("crop_ratio", math.inf)):
    pair = tuple(data[key])
    check(len(pair) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
          and 0 < pair[0] <= pair[1] <= high, f"config.data.{key}={pair} must be (low, high) with "
          f"0 < low <= high{' <= 1' if high == 1.0 else ''}")
  if not data.image_size:
    return
  check(data.name in LAZY_SOURCES, f"config.data.image_size={data.image_size} decodes images on demand, which "
        f"config.data.name={data.name!r} does not; sources that do: {', '.join(LAZY_SOURCES)} (or set image_size=0)")
  check(not data.resize_size or data.resize_size >= data.image_size,
        f"config.data.resize_size={data.resize_size} must be 0 or >= config.data.image_size={data.image_size} "
        "(the centre crop is taken from the resized image)")
  check(data.pipeline != "memory", f"config.data.image_size={data.image_size} decodes images batch by batch as "
        "the run streams them: it needs config.data.pipeline='stream' (or 'auto'), not 'memory'")
  check(data.device_dtype == "auto", f"config.data.device_dtype={data.device_dtype!r} normalises every image on "
        f"the host first, which config.data.image_size={data.image_size} never holds at once; use 'auto'")


def coordinator_address(train) -> str:
  """Process 0's "host:port": config.train.coordinator, else $JAX_COORDINATOR_ADDRESS ("" when neither is set)."""
  return train.coordinator or os.environ.get(COORDINATOR_ENV, "")


def validate_distributed(config: ml_collections.ConfigDict) -> None:
  """config.train's multi-host keys: read only with train.distributed, and consistent with each other.

  Runs before jax.distributed.initialize, which would otherwise fail (or wait) with a traceback.
  """
  train = config.train
  flag(config, "train.distributed")
  if not train.distributed:
    for key, unset in (("coordinator", ""), ("num_processes", 0), ("process_id", -1), ("coordinator_timeout_s", 300)):
      check(train[key] == unset, f"config.train.{key}={train[key]!r} is read only with config.train.distributed"
            f"=True; set that too, or leave {key} at {unset!r}")
    return
  number(config, "train.num_processes", 0, integer=True, note="0 = from the cluster")
  number(config, "train.coordinator_timeout_s", 1, integer=True, note="seconds")
  number(config, "train.process_id", -1, integer=True, note="-1 = from the cluster")
  if train.num_processes and train.process_id >= 0:
    check(train.process_id < train.num_processes,
          f"config.train.process_id={train.process_id} must be in [0, {train.num_processes - 1}] "
          f"(config.train.num_processes={train.num_processes})")
  address = coordinator_address(train)
  match = _ADDRESS.match(address) if address else None
  check(not address or (match is not None and 1 <= int(match.group(2)) <= 65535),
        f"config.train.coordinator (or ${COORDINATOR_ENV})={address!r} must be 'host:port', e.g. 10.0.0.1:1234, "
        "with a port in [1, 65535]")


def validate_optimizer(config: ml_collections.ConfigDict) -> None:
  number(config, "optimizer.lr", 0, low_open=True)
  number(config, "optimizer.momentum", 0, 1, high_open=True)
  number(config, "optimizer.b1", 0, 1, high_open=True)
  number(config, "optimizer.b2", 0, 1, high_open=True)
  number(config, "optimizer.eps", 0, low_open=True)
  number(config, "optimizer.weight_decay", 0)
  number(config, "optimizer.gamma", 0, low_open=True)
  number(config, "optimizer.warmup_epochs", 0, config.train.epochs, note="epochs of linear warmup")
  milestones = list(config.optimizer.milestones)
  check(all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in milestones)
        and milestones == sorted(set(milestones)),
        f"config.optimizer.milestones={tuple(milestones)} must be increasing epochs >= 1")
  number(config, "finetune.lr", 0, note="0 = config.optimizer.lr")
  # the optimizer and schedule names, refused by building both from the values checked above (cheap: no array
  # is made) before any data loads
  state.optimizer(config.optimizer)
  state.learning_rate(config.optimizer, 1, config.train.epochs)


def validate_metrics(config: ml_collections.ConfigDict) -> None:
  m = config.metrics
  number(config, "metrics.num_bins", 1, integer=True)
  number(config, "metrics.max_examples", 0, integer=True, note="0 = all")
  number(config, "metrics.potential_delta", 0)
  for eps in m.similarity_eps:
    check(isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps >= 0,
          f"config.metrics.similarity_eps holds {eps!r}; each radius must be a finite number >= 0")
  for severity in m.severities:
    check(severity in corruptions.SEVERITIES and not isinstance(severity, bool),
          f"config.metrics.severities holds {severity!r}; allowed: {', '.join(map(str, corruptions.SEVERITIES))}")
