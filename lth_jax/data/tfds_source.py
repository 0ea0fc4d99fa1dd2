"""Any prepared TensorFlow Datasets (TFDS) data set, read without TensorFlow.

`tfds.data_source` reads the array_record files of a prepared data set with random access and decodes images
with PIL, so TensorFlow stays optional: it is needed only to *prepare* (download and convert) a data set:

    pip install tensorflow
    tfds build cifar10 --data_dir=DIR --file_format=array_record

after which `--config.data.name=tfds --config.data.tfds_name=cifar10 --config.data.tfds_dir=DIR` works
without it. Where TensorFlow is installed, an unprepared set is prepared so on first use (into tfds_dir, or
TFDS's default). Data sets prepared in TFDS's default TFRecord format cannot be read this way.

Train is TFDS's 'train' split (val is a seeded `val_fraction` of it), test is `config.tfds_test_split` ('test';
'validation' for imagenet2012, whose 'test' split has no labels). Inputs and labels are the data set's supervised
keys, e.g. ('image', 'label').

Every split is read whole into host memory, except with `config.image_size` > 0 (imagenet2012, a manual download
that TFDS prepares once): then the images stay encoded in the array_record files and are decoded batch by batch
as lth_jax.data.lazy describes; only the labels are read up front (every record once: minutes for ImageNet),
and cached as image folders are.
"""

import importlib.util
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from lth_jax.data import files, filetree, lazy
from lth_jax.data.registry import Dataset, register, split
from lth_jax.data.pixels import to_float
from lth_jax.errors import UserError, check


@register("tfds", reads_dir=False)
def tfds_source(config: ml_collections.ConfigDict, seed: int) -> Dataset:
  name = config.tfds_name
  check(bool(name), "config.data.tfds_name is empty; data.name=tfds reads a prepared TFDS data set, "
        "e.g. --config.data.tfds_name=cifar10")
  builder = _prepared_builder(name, config.tfds_dir)
  splits, test = set(builder.info.splits), config.tfds_test_split
  check("train" in splits and test in splits,
        f"config.data.tfds_name={name!r} has the splits {sorted(splits)}, but training needs 'train' and {test!r} "
        "(config.data.tfds_test_split); a test-only set (e.g. cifar10_corrupted) can only serve as an evaluation "
        "(OOD / shift) set")
  check(builder.info.supervised_keys is not None and len(builder.info.supervised_keys) == 2,
        f"config.data.tfds_name={name!r} has no (input, label) supervised keys to train a classifier on")
  input_key, label_key = builder.info.supervised_keys
  if config.image_size:
    parts = _on_demand(builder, config, seed, test)
  else:
    sources = builder.as_data_source()
    x, y = _read(sources["train"], input_key, label_key)
    x_test, y_test = _read(sources[test], input_key, label_key)
    check(x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating),
          f"config.data.tfds_name={name!r}: the {input_key!r} feature is {x.dtype}; only uint8 images "
          "(scaled by 1/255) and float inputs are supported")
    parts = files.cast_inputs([*split(x, y, seed, val_fraction=config.val_fraction), (x_test, y_test)],
                              pixels=x.dtype == np.uint8)
  label = builder.info.features[label_key]
  num_classes = getattr(label, "num_classes", None) or 1 + max(int(labels.max(initial=0)) for _, labels in parts)
  return Dataset(name, *parts, num_classes=num_classes)


def _on_demand(builder, config: ml_collections.ConfigDict, seed: int, test: str) -> list:
  """[train, val, test] with LazyImages inputs over the examples, their images left encoded until a batch
  needs them; the labels read once (records with the image's decoding skipped) and cached."""
  import tensorflow_datasets as tfds  # as in _prepared_builder: imported only when a run asks for it
  name, (input_key, label_key) = config.tfds_name, builder.info.supervised_keys
  check(isinstance(builder.info.features[input_key], tfds.features.Image),
        f"config.data.image_size={config.image_size} decodes images on demand, but the {input_key!r} feature of "
        f"config.data.tfds_name={name!r} is not an image; set image_size=0")
  skip = {input_key: tfds.decode.SkipDecoding()}   # image bytes as stored (JPEG, PNG), decoded by lth_jax.data.lazy
  sources = {s: builder.as_data_source(s, decoders=skip) for s in ("train", test)}
  labels = filetree.cached(Path(builder.data_dir), lambda _: {"y_train": _labels(sources["train"], label_key),
                                                              "y_test": _labels(sources[test], label_key)},
                           kind=f"tfds labels of train and {test}")
  x, x_test = (lazy.images(lazy.EncodedImages(sources[s], input_key, f"tfds:{name}/{s}"), len(sources[s]), config,
                           seed) for s in ("train", test))
  return [*split(x, labels["y_train"], seed, val_fraction=config.val_fraction), (x_test, labels["y_test"])]


def _labels(source, label_key: str, chunk: int = 4096) -> np.ndarray:
  """Every example's label, read `chunk` records at a time."""
  n = len(source)
  return np.array([example[label_key] for start in range(0, n, chunk)
                   for example in source.__getitems__(range(start, min(start + chunk, n)))], np.int32)


def _prepared_builder(name: str, data_dir: str):
  """The TFDS builder of `name`, checked to be prepared in a format that reads without TensorFlow."""
  try:
    import tensorflow_datasets as tfds  # slow to import: only when a run asks for it
  except ImportError as e:
    raise UserError(f"data.name=tfds needs tensorflow-datasets ({e}); pip install tensorflow-datasets") from e
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(f"config.data.tfds_name={name!r} is neither a TFDS data set nor prepared in "
                    f"config.data.tfds_dir={data_dir!r}; see https://www.tensorflow.org/datasets/catalog") from e
  except (ValueError, AssertionError) as e:  # an unknown config or version of a known data set
    raise UserError(f"config.data.tfds_name={name!r}: {' '.join(str(e).split())[:400]}") from e
  rebuild = (f"prepare it with TensorFlow installed (pip install tensorflow): tfds build {name} "
             f"--data_dir={data_dir or '<config.data.tfds_dir>'} --file_format=array_record")
  if not builder.is_prepared() and tensorflow_installed():
    builder = _prepare(tfds, builder, name, data_dir, rebuild)
  check(builder.is_prepared(), f"config.data.tfds_name={name!r} is not prepared in {builder.data_dir} "
        f"(config.data.tfds_dir={data_dir!r}); {rebuild}")
  readable = builder.info.available_file_formats() & tfds.core.FileFormat.with_random_access()
  check(bool(readable), f"config.data.tfds_name={name!r} is prepared in {builder.data_dir} as "
        f"{builder.info.file_format.value}, which needs TensorFlow to read; {rebuild} into another directory")
  return builder


def tensorflow_installed() -> bool:
  # find_spec, not import: TensorFlow takes seconds to import and only TFDS's preparation needs it
  return importlib.util.find_spec("tensorflow") is not None


def _prepare(tfds, builder, name: str, data_dir: str, rebuild: str):
  """Download and convert `name` as array_record (the format read without TensorFlow) into data_dir."""
  logging.info("config.data.tfds_name=%r is not prepared in %s; preparing it with TensorFlow (once)", name,
               builder.data_dir)
  try:
    builder.download_and_prepare(file_format="array_record")
  except Exception as e:  # noqa: BLE001 -- network, disk and TFDS errors alike end in one line saying what to do
    message = " ".join(str(e).split())[:300]
    raise UserError(f"config.data.tfds_name={name!r} could not be prepared in {builder.data_dir} "
                    f"({type(e).__name__}: {message}); {rebuild}, or check the network") from e
  # a fresh builder reads the info (splits, formats) the preparation wrote
  return tfds.builder(name, data_dir=data_dir or None)


def _read(source, input_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
  """Every example of one split, decoded (images by PIL) into one input and one label array."""
  examples = source.__getitems__(range(len(source)))  # one batched read of the array_record files
  x = np.stack([example[input_key] for example in examples])
  y = np.array([example[label_key] for example in examples], np.int64)
  return x, y


def test_split(name: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """The 'test' split of a prepared TFDS set, e.g. the released CIFAR-10-C (`cifar10_corrupted/contrast_5`)
  as a shifted evaluation set; images scaled into [0, 1]."""
  builder = _prepared_builder(name, data_dir)
  check("test" in builder.info.splits, f"config.metrics.shifted holds tfds:{name}, which has no 'test' split")
  input_key, label_key = builder.info.supervised_keys
  x, y = _read(builder.as_data_source()["test"], input_key, label_key)
  return to_float(x), np.asarray(y, np.int32)
