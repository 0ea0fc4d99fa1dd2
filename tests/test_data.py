"""Data sets: shapes, seeded splits that partition the data, penguins preprocessing, IDX files, MNIST."""

import gzip
import struct
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import sklearn.datasets

from lth_jax import data
from lth_jax.config import base
from lth_jax.data.idx import read_idx
from lth_jax.errors import UserError

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def data_config(**overrides) -> ml_collections.ConfigDict:
  config = base().data   # every data key, so a new one cannot be missed here
  config.update(dict(name="moons", dir="", val_fraction=0.1, test_fraction=0.2, n_samples=500, noise=0.1, subset=0))
  config.update(overrides)
  return config


def splits(dataset):
  return [dataset.train, dataset.val, dataset.test]


def sorted_rows(x):
  rows = x.reshape(len(x), -1)
  return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("name, input_shape, num_classes, size, in_unit_range", [
    ("moons", (2,), 2, 500, False),  # raw coordinates
    ("penguins", (12,), 3, 333, True),
    ("digits", (8, 8, 1), 10, 1797, True),
])
def test_builtin_shapes_dtypes_and_split_sizes(name, input_shape, num_classes, size, in_unit_range):
  dataset = data.load(data_config(name=name), seed=0)
  assert dataset.name == name
  assert dataset.input_shape == input_shape
  assert dataset.num_classes == num_classes
  for x, y in splits(dataset):
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.shape == (len(y), *input_shape)
    assert not in_unit_range or (0 <= x.min() and x.max() <= 1)
    assert 0 <= y.min() and y.max() < num_classes
  assert [len(y) for _, y in splits(dataset)] == [size - round(0.1 * size) - round(0.2 * size),
                                                  round(0.1 * size), round(0.2 * size)]
  assert len(np.unique(dataset.train[1])) == num_classes


@pytest.mark.parametrize("name", ["moons", "penguins", "digits"])
def test_same_seed_same_arrays_other_seed_other_split(name):
  first, again, other = (data.load(data_config(name=name), seed) for seed in (3, 3, 4))
  for a, b in zip(splits(first), splits(again)):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(first.test[0], other.test[0])


@pytest.mark.parametrize("name, source", [
    ("moons", lambda: sklearn.datasets.make_moons(n_samples=500, noise=0.1, random_state=5)),
    ("digits", lambda: (sklearn.datasets.load_digits().images / 16, sklearn.datasets.load_digits().target)),
])
def test_splits_partition_the_source(name, source):
  dataset = data.load(data_config(name=name), seed=5)
  x, y = source()
  # As multisets, the three splits together are exactly the source rows (with their labels): none is lost or
  # repeated, so no example sits in two splits even where the source has duplicate rows.
  joined = np.concatenate([np.concatenate([s[0].reshape(len(s[1]), -1), s[1][:, None]], 1) for s in splits(dataset)])
  source_rows = np.concatenate([x.reshape(len(y), -1).astype(np.float32), y[:, None]], 1)
  np.testing.assert_array_equal(sorted_rows(joined), sorted_rows(source_rows))


def test_moons_splits_are_disjoint():
  dataset = data.load(data_config(), seed=0)
  rows = [{tuple(row) for row in x} for x, _ in splits(dataset)]
  assert sum(map(len, rows)) == 500  # noisy points are all distinct
  assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])


def test_penguins_preprocessing():
  dataset = data.load(data_config(name="penguins"), seed=0)
  x = np.concatenate([x for x, _ in splits(dataset)])
  y = np.concatenate([y for _, y in splits(dataset)])
  assert x.shape == (333, 12)
  numeric, groups = x[:, :4], [x[:, 4:7], x[:, 7:9], x[:, 9:12]]  # island, sex, year
  assert numeric.min() > 0
  np.testing.assert_allclose(numeric.max(axis=0), 1)  # divided by the column maximum
  for group in groups:
    assert set(np.unique(group)) == {0, 1}
    np.testing.assert_array_equal(group.sum(axis=1), 1)
    assert group.sum(axis=0).min() > 0  # every category occurs
  np.testing.assert_array_equal(np.bincount(y), [146, 68, 119])  # Adelie, Chinstrap, Gentoo without NA rows


def test_subset_keeps_head_of_shuffled_train():
  full = data.load(data_config(), seed=0)
  small = data.load(data_config(subset=50), seed=0)
  np.testing.assert_array_equal(small.train[0], full.train[0][:50])
  np.testing.assert_array_equal(small.test[0], full.test[0])
  with pytest.raises(UserError, match="config.data.subset"):
    data.load(data_config(subset=10_000), seed=0)


def test_bad_config_values():
  with pytest.raises(UserError, match=r"config.data.name='nope' is not a data set; allowed: .*moons"):
    data.load(data_config(name="nope"), seed=0)
  with pytest.raises(UserError, match="config.data.val_fraction"):
    data.load(data_config(val_fraction=1.5), seed=0)
  with pytest.raises(UserError, match="no training examples"):
    data.load(data_config(val_fraction=0.5, test_fraction=0.5), seed=0)
  assert {"moons", "penguins", "digits", "mnist"} <= set(data.names())


def write_idx(path: Path, array: np.ndarray, magic: int):
  header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
  payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


@pytest.mark.parametrize("filename", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trip(tmp_path, filename):
  images = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
  write_idx(tmp_path / filename, images, magic=2051)
  np.testing.assert_array_equal(read_idx(tmp_path / filename), images)


def test_read_idx_wider_types(tmp_path):
  values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
  write_idx(tmp_path / "ints", values, magic=0x0C02)
  result = read_idx(tmp_path / "ints")
  assert result.dtype == np.int32
  np.testing.assert_array_equal(result, values)


def test_read_idx_rejects_bad_files(tmp_path):
  write_idx(tmp_path / "bad", np.zeros((2, 2, 2), np.uint8), magic=0x12345678)
  with pytest.raises(UserError, match=f"{tmp_path / 'bad'}.*magic"):
    read_idx(tmp_path / "bad")
  (tmp_path / "short").write_bytes(struct.pack(">I3I", 2051, 2, 2, 2) + b"\0" * 7)
  with pytest.raises(UserError, match="short"):
    read_idx(tmp_path / "short")


def test_mnist_missing_dir_or_file(tmp_path):
  missing = tmp_path / "no_such_dir"
  with pytest.raises(UserError, match="--config.data.dir") as error:
    data.load(data_config(name="mnist", dir=str(missing)), seed=0)
  assert str(missing) in str(error.value) and "train-images-idx3-ubyte" in str(error.value)
  with pytest.raises(UserError, match="train-images-idx3-ubyte.*not found"):
    data.load(data_config(name="mnist", dir=str(tmp_path)), seed=0)


def test_mnist_from_small_idx_files(tmp_path):
  rng = np.random.default_rng(0)
  for prefix, n in [("train", 24), ("t10k", 6)]:
    write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), np.uint8), 2051)
    write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10, 2049)
  dataset = data.load(data_config(name="mnist", dir=str(tmp_path), val_fraction=0.25), seed=0)
  assert [len(y) for _, y in splits(dataset)] == [18, 6, 6]
  assert dataset.input_shape == (28, 28, 1) and dataset.train[0].dtype == np.uint8   # pixels stay 8-bit
  np.testing.assert_array_equal(dataset.test[1], np.arange(6))  # test keeps the file's order
  # Labels swapped for images: the magic number says the rank is wrong.
  write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros(6, np.uint8), 2049)
  with pytest.raises(UserError, match="t10k-images.*2051"):
    data.load(data_config(name="mnist", dir=str(tmp_path)), seed=0)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST at {MNIST_DIR}")
def test_real_mnist():
  dataset = data.load(data_config(name="mnist", dir=str(MNIST_DIR), val_fraction=1 / 12), seed=0)
  assert [len(y) for _, y in splits(dataset)] == [55_000, 5_000, 10_000]
  assert dataset.input_shape == (28, 28, 1) and dataset.num_classes == 10
  assert dataset.test[1][0] == 7  # the first t10k label
  assert dataset.train[0].dtype == np.uint8 and dataset.train[0].max() == 255 and dataset.train[0].min() == 0
  assert set(np.unique(dataset.val[1])) == set(range(10))
