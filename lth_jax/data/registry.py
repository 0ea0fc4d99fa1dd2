"""Data sets by name, as numpy arrays split into train / val / test: the registry and the split.

`load(config.data, seed)` returns a `Dataset`. Sources register themselves with `@register(name)` and
read only the config keys they need. A user's own source is named "pkg.module:load" in config.data.name:
a function of the same form, `load(config.data, seed) -> Dataset`, reading its options from config.data.kwargs.
8-bit images stay uint8 pixels (v stands for v / 255, `pixels.to_float` scales them) and other inputs become
float32: normalising by mean and standard deviation is the training code's job, inside jit for pixels
(`pixels.Normalizer`).
"""

import dataclasses
from typing import Callable

import ml_collections
import numpy as np

from lth_jax import user_code
from lth_jax.data import lazy
from lth_jax.errors import UserError, check

Split = tuple[np.ndarray, np.ndarray]  # x float32 or uint8 pixels (N, ...features), y int32 (N,)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Dataset:
  name: str
  train: Split
  val: Split
  test: Split
  num_classes: int

  @property
  def input_shape(self) -> tuple[int, ...]:
    return self.train[0].shape[1:]


Source = Callable[[ml_collections.ConfigDict, int], Dataset]
_REGISTRY: dict[str, Source] = {}
_READS_DIR: dict[str, bool] = {}


def register(name: str, reads_dir: bool = True):
  """Registers a source under `name`; `reads_dir=False` for one that reads no files of config.data.dir
  (generated, or shipped with a package), so that a dir given to it is refused rather than ignored."""
  def decorate(source: Source) -> Source:
    _REGISTRY[name] = source
    _READS_DIR[name] = reads_dir
    return source
  return decorate


def names() -> list[str]:
  return sorted(_REGISTRY)


def load(config: ml_collections.ConfigDict, seed: int) -> Dataset:
  """Loads `config.name`, split with `seed`; `config.subset` > 0 keeps that many training examples."""
  own = user_code.is_import_path(config.name)
  check(own or not config.get("kwargs"), lambda: f"config.data.kwargs={config.kwargs.to_dict()} holds the options "
        f"of a source given as 'pkg.module:load'; config.data.name={config.name!r} is built in")
  if own:
    dataset = _load_own(config, seed)
  elif config.name not in _REGISTRY:
    raise UserError(f"config.data.name={config.name!r} is not a data set; allowed: {', '.join(names())}, or your "
                    "own as 'pkg.module:load'")
  else:
    check(_READS_DIR[config.name] or not config.get("dir"),
          lambda: f"config.data.dir={config.dir!r} is not read by config.data.name={config.name!r}, which reads no "
          f"files; sources that read it: {', '.join(n for n in names() if _READS_DIR[n])}")
    dataset = _REGISTRY[config.name](config, seed)
  check_sane(dataset, f"config.data.name={config.name!r}" + (f" ({config.dir})" if config.get("dir") else ""))
  if config.subset:
    x, y = dataset.train
    check(0 < config.subset <= len(y),
          f"config.data.subset={config.subset} must be 0 (all) or in [1, {len(y)}] for {config.name}")
    # The training split is already shuffled, so its head is a random subset.
    dataset = dataclasses.replace(dataset, train=(_rows(x, slice(config.subset)), y[:config.subset]))
  if config.test_subset:
    x, y = dataset.test
    check(0 < config.test_subset <= len(y),
          f"config.data.test_subset={config.test_subset} must be 0 (all) or in [1, {len(y)}] for {config.name}")
    # Test splits are often sorted by class: take a seeded random subset, not the head.
    keep = np.sort(np.random.default_rng(seed).permutation(len(y))[:config.test_subset])
    dataset = dataclasses.replace(dataset, test=(_rows(x, keep), y[keep]))
  return dataset


def _rows(x, rows):
  """x[rows] for an array; a split decoded on demand (lazy.LazyImages) stays undecoded."""
  return x.take(rows) if isinstance(x, lazy.LazyImages) else x[rows]


def _load_own(config: ml_collections.ConfigDict, seed: int) -> Dataset:
  """The Dataset of the user's source config.name ("pkg.module:load"), called as a registered source is."""
  source = user_code.load(config.name, "config.data.name")
  check(callable(source) and not isinstance(source, type),
        lambda: f"config.data.name={config.name!r} is {user_code.kind(source)}, not a function load(config, seed) "
        "returning an lth_jax.data.Dataset")
  try:
    dataset = source(config, seed)
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001  -- whatever the user's source raises
    raise UserError(f"config.data.name={config.name!r} failed: {user_code.first_line(e)}") from None
  check(isinstance(dataset, Dataset), f"config.data.name={config.name!r} returned {user_code.kind(dataset)}, "
        "not an lth_jax.data.Dataset (the train, val and test splits and num_classes)")
  return dataset


def check_sane(dataset: Dataset, where: str) -> None:
  """Train and test examples, at least 2 classes, finite inputs and every label one of the classes: else a
  run trains on garbage (a NaN validation loss) or silently builds a model with classes the data do not have."""
  for part, (x, _) in (("train", dataset.train), ("test", dataset.test)):   # val may be empty: val_fraction=0
    check(len(x) > 0, f"{where}: the {part} split is empty; it needs at least one example")
  check(dataset.num_classes >= 2, f"{where} has {dataset.num_classes} class(es); classification needs at least 2")
  for part, (x, y) in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test)):
    if getattr(x, "dtype", None) != np.uint8:   # pixels are finite (and a LazyImages split stays undecoded)
      flat = np.asarray(x).ravel()   # a split may be empty (data.val_fraction=0)
      bad = np.flatnonzero(~np.isfinite(flat))
      check(len(bad) == 0, lambda: f"{where}: the {part} inputs hold non-finite values, e.g. {flat[bad[0]]}")
    outside = np.asarray(y)[(np.asarray(y) < 0) | (np.asarray(y) >= dataset.num_classes)]
    check(outside.size == 0, lambda: f"{where}: the {part} labels hold {outside[0]}, outside the "
          f"{dataset.num_classes} classes 0..{dataset.num_classes - 1} that the train and test splits agree on")


def split(x: np.ndarray, y: np.ndarray, seed: int, **fractions: float) -> list[Split]:
  """Shuffles (x, y) with `seed` and returns [train, *one part per fraction], cast to float32 (uint8 pixels
  stay uint8) / int32.

  The keyword names are the config keys (`val_fraction=...`), so that errors can name them.
  """
  dtype = np.uint8 if x.dtype == np.uint8 else np.float32
  cast = (lambda part: x.take(part)) if isinstance(x, lazy.LazyImages) else \
      (lambda part: x[part].astype(dtype, copy=False))   # a LazyImages split stays undecoded
  return [(cast(part), y[part].astype(np.int32, copy=False)) for part in split_indices(len(y), seed, **fractions)]


def split_indices(n: int, seed: int, **fractions: float) -> list[np.ndarray]:
  """`split`'s parts as example indices into 0..n-1: [train, *one part per fraction].

  Args:
    n: the number of examples.
    seed: the shuffle's seed.
    **fractions: each part's fraction of n, named by its config key (`val_fraction=...`).
  Returns:
    Index arrays in the shuffled order, which `split` takes its parts in.
  """
  for key, fraction in fractions.items():
    check(0 <= fraction < 1, f"config.data.{key}={fraction} must be in [0, 1)")
  sizes = [round(fraction * n) for fraction in fractions.values()]
  num_train = n - sum(sizes)
  check(num_train > 0, f"config.data.{' + '.join(fractions)} leaves no training examples out of {n}")
  order = np.random.default_rng(seed).permutation(n)
  return np.split(order, np.cumsum([num_train, *sizes[:-1]]))
