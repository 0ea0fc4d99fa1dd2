"""Two moons, Palmer penguins and sklearn's digits (no network); MNIST from IDX files (fetched when no dir)."""

from pathlib import Path

import ml_collections
import numpy as np
import palmerpenguins
import sklearn.datasets

from lth_jax.data import download
from lth_jax.data.registry import Dataset, register, split
from lth_jax.data.idx import read_idx
from lth_jax.errors import UserError, check

Config = ml_collections.ConfigDict


@register("moons", reads_dir=False)
def moons(config: Config, seed: int) -> Dataset:
  check(config.noise >= 0, f"config.data.noise={config.noise} must be >= 0")
  check(config.n_samples >= 1, f"config.data.n_samples={config.n_samples} must be >= 1")
  x, y = sklearn.datasets.make_moons(n_samples=config.n_samples, noise=config.noise, random_state=seed)
  train, val, test = split(x, y, seed, val_fraction=config.val_fraction, test_fraction=config.test_fraction)
  return Dataset("moons", train, val, test, num_classes=2)


PENGUIN_MEASUREMENTS = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
PENGUIN_CATEGORIES = ["island", "sex", "year"]  # one-hot: 3 + 2 + 3 columns


@register("penguins", reads_dir=False)
def penguins(config: Config, seed: int) -> Dataset:
  """12 features: the four measurements, then one-hot island, sex and year. Label: species, sorted."""
  table = palmerpenguins.load_penguins().dropna()  # 333 of the 344 rows are complete
  measurements = table[PENGUIN_MEASUREMENTS].to_numpy(np.float64)
  # As in the Dynamic Pruning seed: divide by each column's maximum over the table, so values lie in (0, 1].
  columns = [measurements / measurements.max(axis=0)]
  columns += [_one_hot(table[name].to_numpy()) for name in PENGUIN_CATEGORIES]
  species, y = np.unique(table["species"].to_numpy(), return_inverse=True)  # Adelie, Chinstrap, Gentoo
  train, val, test = split(np.concatenate(columns, axis=1), y, seed,
                           val_fraction=config.val_fraction, test_fraction=config.test_fraction)
  return Dataset("penguins", train, val, test, num_classes=len(species))


def _one_hot(values: np.ndarray) -> np.ndarray:
  categories, index = np.unique(values, return_inverse=True)
  return np.eye(len(categories))[index]


@register("digits", reads_dir=False)
def digits(config: Config, seed: int) -> Dataset:
  data = sklearn.datasets.load_digits()
  x = (data.images / 16.0)[..., None]  # 8x8 pixels with values 0..16
  train, val, test = split(x, data.target, seed,
                           val_fraction=config.val_fraction, test_fraction=config.test_fraction)
  return Dataset("digits", train, val, test, num_classes=10)


MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@register("mnist")
def mnist(config: Config, seed: int) -> Dataset:
  """Test: the t10k files. Val: a seeded `val_fraction` of train (the Lottery Ticket paper: 5000 of 60000)."""
  return idx_images("mnist", config, seed)


def idx_images(name: str, config: Config, seed: int) -> Dataset:
  """MNIST's four IDX files in `config.dir` (empty: fetched into the cache); Fashion-MNIST has the same names."""
  directory = Path(config.dir).expanduser() if config.dir else download.fetch(name, config)
  check(directory.is_dir(),
        f"config.data.dir={config.dir!r} is not a directory; {name} expects {', '.join(MNIST_FILES)} "
        "(raw or .gz) there; set it with --config.data.dir")
  x, y = _mnist_part(name, directory, "train")
  train, val = split(x, y, seed, val_fraction=config.val_fraction)
  return Dataset(name, train, val, _mnist_part(name, directory, "t10k"), num_classes=10)


def _mnist_part(name: str, directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
  images_path = _find(name, directory, f"{prefix}-images-idx3-ubyte")
  labels_path = _find(name, directory, f"{prefix}-labels-idx1-ubyte")
  images, labels = read_idx(images_path), read_idx(labels_path)
  # The magic number fixes type and rank: 2051 is uint8 with 3 dims, 2049 uint8 with 1 dim.
  check(images.dtype == np.uint8 and images.ndim == 3,
        f"{images_path}: expected IDX images (magic 2051), got {images.dtype} {images.shape}")
  check(labels.dtype == np.uint8 and labels.ndim == 1,
        f"{labels_path}: expected IDX labels (magic 2049), got {labels.dtype} {labels.shape}")
  check(len(images) == len(labels),
        f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
  return images[..., None], labels.astype(np.int32)   # pixels stay uint8 (see lth_jax.data.pixels)


def _find(dataset: str, directory: Path, name: str) -> Path:
  for path in (directory / name, directory / f"{name}.gz"):
    if path.is_file():
      return path
  raise UserError(f"{directory / name} (or .gz) not found; {dataset} expects {', '.join(MNIST_FILES)} "
                  "(raw or .gz) in config.data.dir; set it with --config.data.dir")
