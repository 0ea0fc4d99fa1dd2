"""Image sources from files in their real formats, the TFDS source on a real prepared data set, augmentation."""

import gzip
import os
import pickle
import re
import struct
import tarfile
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import PIL.Image
import pytest

from lth_jax import data
from lth_jax.config import base
from lth_jax.data import augment, files
from lth_jax.errors import UserError
from tests.helpers import write_image_folder

CIFAR10_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10-images.tar.gz"


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
  """Decoded-image caches go to a fresh directory, never to the user's ~/.cache."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  return tmp_path / "cache" / "lth_jax"


def data_config(**overrides) -> ml_collections.ConfigDict:
  config = base().data   # every data key, so a new one cannot be missed here
  config.update(dict(name="npz", dir="", val_fraction=0.25, test_fraction=0.0, subset=0, tfds_name="", tfds_dir=""))
  config.update(overrides)
  return config


def sizes(dataset):
  return [len(y) for _, y in (dataset.train, dataset.val, dataset.test)]


def assert_train_val_partition(dataset, x_uint8, y):
  """Train and val together hold exactly the given examples, each with its label, as uint8 pixels."""
  x = np.concatenate([dataset.train[0], dataset.val[0]])
  labels = np.concatenate([dataset.train[1], dataset.val[1]])
  assert x.dtype == np.uint8
  got = sorted(zip(map(bytes, x.reshape(len(x), -1)), labels))
  want = sorted(zip(map(bytes, x_uint8.reshape(len(x_uint8), -1)), y))
  assert got == want


def assert_images(x, y, x_uint8, y_expected):
  assert x.dtype == np.uint8 and y.dtype == np.int32   # 8-bit pixels stay uint8 (lth_jax.data.pixels)
  np.testing.assert_array_equal(x, x_uint8)
  np.testing.assert_array_equal(y, y_expected)


def random_images(n, height=32, width=32, channels=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, height, width, channels), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ Fashion-MNIST


def write_idx(path: Path, array: np.ndarray, magic: int):
  payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
  path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def test_fashion_mnist_reads_the_mnist_idx_files(tmp_path):
  x, x_test = random_images(20, 28, 28, 1), random_images(6, 28, 28, 1, seed=1)
  y, y_test = np.arange(20) % 10, (np.arange(6) * 3) % 10
  write_idx(tmp_path / "train-images-idx3-ubyte.gz", x[..., 0], 2051)
  write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y.astype(np.uint8), 2049)
  write_idx(tmp_path / "t10k-images-idx3-ubyte", x_test[..., 0], 2051)
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", y_test.astype(np.uint8), 2049)
  dataset = data.load(data_config(name="fashion_mnist", dir=str(tmp_path)), seed=0)
  assert dataset.name == "fashion_mnist" and dataset.num_classes == 10 and dataset.input_shape == (28, 28, 1)
  assert sizes(dataset) == [15, 5, 6]
  assert_images(*dataset.test, x_test, y_test)  # test keeps the file's order
  assert_train_val_partition(dataset, x, y)
  with pytest.raises(UserError, match="fashion_mnist expects"):
    data.load(data_config(name="fashion_mnist", dir=str(tmp_path / "nope")), seed=0)


# ------------------------------------------------------------------------------------------------ CIFAR


def cifar_batch(images, labels, label_key=b"labels"):
  """A batch as torchvision's pickles hold it: rows of 3072 bytes, the R plane, then G, then B."""
  rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
  batch = {b"batch_label": b"testing batch", b"data": rows, label_key: [int(label) for label in labels],
           b"filenames": [b"x.png"] * len(images)}
  if label_key == b"fine_labels":
    batch[b"coarse_labels"] = [int(label) // 5 for label in labels]
  return pickle.dumps(batch, protocol=2)


class Harmless:
  """Pickles as a call to os.getcwd: a loader that honoured it would run code from the file."""

  def __reduce__(self):
    return (os.getcwd, ())


def write_cifar(root: Path, name: str):
  """Writes the torchvision folder of cifar10 or cifar100 with a few images; returns the folder and the data."""
  layout = files.CIFAR[name]
  rng = np.random.default_rng(1)
  folder = root / layout.folder
  folder.mkdir(parents=True)
  members = {member: 3 for member in layout.train} | {member: 4 for member in layout.test}
  written = {}
  for i, (member, n) in enumerate(members.items()):
    images, labels = random_images(n, seed=i), rng.integers(0, layout.num_classes, n)
    (folder / member).write_bytes(cifar_batch(images, labels, layout.label_key))
    written[member] = images, labels
  # The archive's other members are never unpickled: this one would fail the load if it were.
  (folder / ("batches.meta" if name == "cifar10" else "meta")).write_bytes(pickle.dumps(Harmless()))
  join = lambda names: tuple(np.concatenate(part) for part in zip(*(written[member] for member in names)))
  return folder, join(layout.train), join(layout.test)


def tar_gz(source: Path, archive: Path, arcname: str) -> Path:
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(source, arcname=arcname)
  return archive


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_folder_parent_and_archive(tmp_path, name):
  layout = files.CIFAR[name]
  folder, (x, y), (x_test, y_test) = write_cifar(tmp_path / "data", name)
  (tmp_path / "archive").mkdir()
  archive = tar_gz(folder, tmp_path / "archive" / layout.archive, layout.folder)
  n = len(y)
  for location in (folder, folder.parent, archive, archive.parent):
    dataset = data.load(data_config(name=name, dir=str(location)), seed=3)
    assert dataset.name == name and dataset.num_classes == layout.num_classes
    assert dataset.input_shape == (32, 32, 3)
    assert sizes(dataset) == [n - round(n / 4), round(n / 4), len(y_test)]
    assert_images(*dataset.test, x_test, y_test)  # channel-major rows decoded to the written pixels
    assert_train_val_partition(dataset, x, y)


def test_cifar_refuses_foreign_pickles_and_missing_members(tmp_path):
  folder, _, _ = write_cifar(tmp_path, "cifar10")
  (folder / "test_batch").write_bytes(pickle.dumps({b"data": Harmless()}))
  with pytest.raises(UserError, match="test_batch: not a CIFAR python batch.*refusing to load posix.getcwd"):
    data.load(data_config(name="cifar10", dir=str(folder)), seed=0)
  (folder / "test_batch").unlink()
  archive = tar_gz(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
  for location in (folder, archive):
    with pytest.raises(UserError, match="lacks cifar-10-batches-py/test_batch"):
      data.load(data_config(name="cifar10", dir=str(location)), seed=0)
  archive.unlink()
  (folder / "data_batch_1").unlink()
  with pytest.raises(UserError, match="holds neither data_batch_1 nor cifar-10-batches-py/ nor cifar-10-python"):
    data.load(data_config(name="cifar10", dir=str(folder)), seed=0)


# ----------------------------------------------------------------------------------------- image folder


@pytest.mark.parametrize("as_archive", [False, True])
def test_image_folder_from_directory_and_archive(tmp_path, cache_home, monkeypatch, as_archive):
  written = write_image_folder(tmp_path / "pets")
  location = tar_gz(tmp_path / "pets", tmp_path / "pets.tgz", "pets") if as_archive else tmp_path / "pets"
  dataset = data.load(data_config(name="image_folder", dir=str(location)), seed=0)
  assert dataset.name == "image_folder" and dataset.num_classes == 3 and dataset.input_shape == (4, 5, 3)
  assert sizes(dataset) == [9, 3, 6]
  assert_images(*dataset.test, *written["test"])  # PNG is lossless; test is ordered by class, then file
  assert_train_val_partition(dataset, *written["train"])
  # The second load reads the cache, not the images.
  assert len(list(cache_home.glob("*.npz"))) == 1
  monkeypatch.setattr(files, "_decode_image_tree", lambda path: pytest.fail("decoded again"))
  again = data.load(data_config(name="image_folder", dir=str(location)), seed=0)
  np.testing.assert_array_equal(again.train[0], dataset.train[0])


def test_image_folder_cache_follows_changes(tmp_path, cache_home):
  write_image_folder(tmp_path / "pets")
  config = data_config(name="image_folder", dir=str(tmp_path / "pets"))
  before = data.load(config, seed=0)
  PIL.Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "pets" / "test" / "ant" / "9.png")
  after = data.load(config, seed=0)
  assert sizes(after) == [9, 3, 7] and sizes(before) == [9, 3, 6]
  assert len(list(cache_home.glob("*.npz"))) == 2


def test_image_folder_grey_images_keep_one_channel(tmp_path):
  written = write_image_folder(tmp_path / "grey", mode="L")
  dataset = data.load(data_config(name="image_folder", dir=str(tmp_path / "grey")), seed=0)
  assert dataset.input_shape == (4, 5, 1)
  assert_images(*dataset.test, *written["test"])


def test_image_folder_errors(tmp_path):
  write_image_folder(tmp_path / "pets")
  config = data_config(name="image_folder", dir=str(tmp_path / "pets"))
  odd = tmp_path / "pets" / "train" / "cat" / "odd.png"
  PIL.Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(odd)
  with pytest.raises(UserError, match=r"train/cat/odd.png is 7x7x3 but .* is 4x5x3"):
    data.load(config, seed=0)
  odd.unlink()
  (tmp_path / "pets" / "test" / "bee").mkdir()
  PIL.Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "pets" / "test" / "bee" / "0.png")
  with pytest.raises(UserError, match=r"test classes differ.*only in test: \['bee'\]"):
    data.load(config, seed=0)
  (tmp_path / "pets" / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(UserError, match="broken.jpg: cannot decode"):
    data.load(config, seed=0)
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match=r"no images in .*empty/train/<class>/"):
    data.load(data_config(name="image_folder", dir=str(tmp_path / "empty")), seed=0)


# -------------------------------------------------------------------------------------------------- npz


def test_npz_pixels_floats_and_given_val(tmp_path):
  x, x_test = random_images(12, 6, 6, 3), random_images(4, 6, 6, 3, seed=1)
  y, y_test = np.arange(12) % 3, np.array([2, 0, 1, 2])
  np.savez(tmp_path / "pixels.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
  dataset = data.load(data_config(dir=str(tmp_path / "pixels.npz")), seed=0)
  assert dataset.num_classes == 3 and sizes(dataset) == [9, 3, 4] and dataset.input_shape == (6, 6, 3)
  assert_images(*dataset.test, x_test, y_test)
  assert_train_val_partition(dataset, x, y)

  rows = np.random.default_rng(0).normal(size=(10, 5))  # tabular floats are taken as they are
  np.savez(tmp_path / "table.npz", x_train=rows, y_train=np.arange(10) % 2, x_test=rows[:3], y_test=[0, 1, 1],
           x_val=rows[3:5] * 10, y_val=[1, 1])
  dataset = data.load(data_config(dir=str(tmp_path / "table.npz")), seed=0)
  assert dataset.num_classes == 2 and sizes(dataset) == [10, 2, 3] and dataset.input_shape == (5,)
  np.testing.assert_array_equal(dataset.val[0], (rows[3:5] * 10).astype(np.float32))
  np.testing.assert_array_equal(np.sort(dataset.train[0], axis=0), np.sort(rows.astype(np.float32), axis=0))

  grey = random_images(8, 5, 5, 1)[..., 0]  # (N, H, W) images get a channel axis
  np.savez(tmp_path / "grey.npz", x_train=grey, y_train=np.arange(8) % 2, x_test=grey[:2], y_test=[0, 1])
  assert data.load(data_config(dir=str(tmp_path / "grey.npz")), seed=0).input_shape == (5, 5, 1)


def test_npz_errors(tmp_path):
  np.savez(tmp_path / "short.npz", x_train=np.zeros((4, 2)), y_train=np.zeros(4, int))
  with pytest.raises(UserError, match="short.npz lacks x_test, y_test"):
    data.load(data_config(dir=str(tmp_path / "short.npz")), seed=0)
  np.savez(tmp_path / "objects.npz", x_train=np.array([{}, {}], object), y_train=[0, 1], x_test=[[0.0]],
           y_test=[0])
  with pytest.raises(UserError, match="objects.npz: not a readable .npz of plain arrays"):
    data.load(data_config(dir=str(tmp_path / "objects.npz")), seed=0)
  np.savez(tmp_path / "ints.npz", x_train=np.zeros((4, 2), np.int64), y_train=np.zeros(4, int),
           x_test=np.zeros((1, 2), np.int64), y_test=[0])
  with pytest.raises(UserError, match="x_train is int64; save uint8 pixels"):
    data.load(data_config(dir=str(tmp_path / "ints.npz")), seed=0)


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100", "image_folder", "npz"])
def test_missing_path_is_a_user_error_naming_it(tmp_path, name):
  missing = tmp_path / "no" / "such.tar.gz"
  with pytest.raises(UserError, match="config.data.dir") as error:
    data.load(data_config(name=name, dir=str(missing)), seed=0)
  assert str(missing) in str(error.value)
  with pytest.raises(UserError, match="config.data.dir"):
    data.load(data_config(name=name, dir=""), seed=0)


@pytest.mark.skipif(not CIFAR10_IMAGES.is_file(), reason=f"no CIFAR-10 images at {CIFAR10_IMAGES}")
def test_real_cifar10_jpeg_tarball(cache_home):
  config = data_config(name="image_folder", dir=str(CIFAR10_IMAGES), val_fraction=0.1)
  start = time.perf_counter()
  dataset = data.load(config, seed=0)
  cold = time.perf_counter() - start
  assert sizes(dataset) == [45_000, 5_000, 10_000]
  assert dataset.num_classes == 10 and dataset.input_shape == (32, 32, 3)
  for x, _ in (dataset.train, dataset.val, dataset.test):
    assert x.dtype == np.uint8 and x.min() == 0 and x.max() == 255
  np.testing.assert_array_equal(np.bincount(dataset.test[1]), [1000] * 10)
  start = time.perf_counter()
  cached = data.load(config, seed=0)
  assert time.perf_counter() - start < cold / 2
  np.testing.assert_array_equal(cached.val[0], dataset.val[0])


# ------------------------------------------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A real prepared TFDS data set in array_record files, built without TensorFlow.

  tfds only needs TensorFlow to encode numpy images; PIL images are encoded by PIL. skip_registration keeps
  the builders out of TFDS's catalogue, so loading by name reads them from `data_dir` as a user's would be.
  """
  tfds = pytest.importorskip("tensorflow_datasets")
  directory = tmp_path_factory.mktemp("tfds")

  def generate(n, seed):
    images = random_images(n, 4, 6, 3, seed=seed)
    for i, image in enumerate(images):
      yield i, {"image": PIL.Image.fromarray(image), "label": i % 3}

  class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    SPLITS = {"train": 8, "test": 4}

    def _info(self):
      features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(4, 6, 3)),
                                             "label": tfds.features.ClassLabel(names=["a", "b", "c"])})
      return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {name: self._generate_examples(n, seed) for seed, (name, n) in enumerate(self.SPLITS.items())}

    def _generate_examples(self, n, seed):
      yield from generate(n, seed)

  class TinyTestOnly(TinyImages, skip_registration=True):
    SPLITS = {"test": 4}

  for builder in (TinyImages, TinyTestOnly):
    builder(data_dir=str(directory), file_format="array_record").download_and_prepare()
  return directory


def test_tfds_reads_a_prepared_array_record_data_set(tfds_dir):
  dataset = data.load(data_config(name="tfds", tfds_name="tiny_images", tfds_dir=str(tfds_dir)), seed=0)
  assert dataset.name == "tiny_images" and dataset.num_classes == 3 and dataset.input_shape == (4, 6, 3)
  assert sizes(dataset) == [6, 2, 4]
  # array_record keeps examples in a shuffled order of their keys: compare as sets of (pixels, label).
  x_test, y_test = random_images(4, 4, 6, 3, seed=1), np.arange(4) % 3
  assert dataset.test[0].dtype == np.uint8
  got = sorted(zip(map(bytes, dataset.test[0]), dataset.test[1]))
  assert got == sorted(zip(map(bytes, x_test), y_test))
  assert_train_val_partition(dataset, random_images(8, 4, 6, 3, seed=0), np.arange(8) % 3)


def test_tfds_errors(tfds_dir, tmp_path):
  with pytest.raises(UserError, match=rf"not prepared in {re.escape(str(tmp_path))}.*tfds build cifar10 --data_dir="):
    data.load(data_config(name="tfds", tfds_name="cifar10", tfds_dir=str(tmp_path)), seed=0)
  with pytest.raises(UserError, match=r"splits \['test'\].*evaluation \(OOD / shift\) set"):
    data.load(data_config(name="tfds", tfds_name="tiny_test_only", tfds_dir=str(tfds_dir)), seed=0)
  with pytest.raises(UserError, match="'no_such_set' is neither a TFDS data set nor prepared"):
    data.load(data_config(name="tfds", tfds_name="no_such_set", tfds_dir=str(tfds_dir)), seed=0)
  with pytest.raises(UserError, match="config.data.tfds_name is empty"):
    data.load(data_config(name="tfds"), seed=0)


# ----------------------------------------------------------------------------------------- augmentation


@pytest.fixture(scope="module")
def batch():
  # Values in [0.5, 1]: a padded zero can never be mistaken for a pixel.
  return 0.5 + 0.5 * np.random.default_rng(0).random((16, 8, 8, 3)).astype(np.float32)


def test_crop_flip_shape_range_and_determinism(batch):
  step = jax.jit(augment.crop_flip)
  out = np.asarray(step(jax.random.key(0), batch))
  assert out.shape == batch.shape and out.dtype == batch.dtype
  assert np.all((out == 0) | ((out >= batch.min()) & (out <= batch.max())))
  assert (out == 0).any() and not np.array_equal(out, batch)  # some crops moved, so some padding shows
  np.testing.assert_array_equal(out, step(jax.random.key(0), batch))
  assert not np.array_equal(out, step(jax.random.key(1), batch))


def test_crop_flip_crops_are_shifted_windows(batch):
  out = np.asarray(augment.crop_flip(jax.random.key(2), batch, pad=2))
  padded = np.pad(batch, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for image, result in zip(padded, out):
    windows = [image[i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
    assert any(np.array_equal(result, w) or np.array_equal(result, w[:, ::-1]) for w in windows)


def test_flip_only_gives_the_image_or_its_mirror(batch):
  out = np.asarray(augment.crop_flip(jax.random.key(3), batch, pad=0))
  flipped = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, batch)]
  kept = [np.array_equal(o, x) for o, x in zip(out, batch)]
  assert all(f or k for f, k in zip(flipped, kept))
  assert any(flipped) and any(kept)  # 16 fair coins


def test_augmentation_names():
  assert augment.get("none") is None and augment.get("crop_flip") is augment.crop_flip
  with pytest.raises(UserError, match=r"config.data.augment='mixup' .*allowed: none, crop_flip"):
    augment.get("mixup")


def test_tfds_test_split_serves_a_test_only_set_as_a_shifted_set(tfds_dir):
  from lth_jax.data import tfds_source
  x, y = tfds_source.test_split("tiny_test_only", str(tfds_dir))
  assert x.shape == (4, 4, 6, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
  assert sorted(y.tolist()) == sorted((np.arange(4) % 3).tolist())
