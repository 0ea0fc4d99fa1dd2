"""An unprepared TFDS set prepares itself where TensorFlow is installed, and otherwise says how in one line.

TensorFlow is not installed here and no test reaches the network: `tfds.builder` is replaced by fake
builders that remember, per data_dir, whether they were prepared.
"""

import importlib.util

import numpy as np
import pytest

from lth_jax import data
from lth_jax.config import base
from lth_jax.errors import UserError

tfds = pytest.importorskip("tensorflow_datasets")


class FakeSource:
  def __init__(self, n: int):
    self._n = n

  def __len__(self):
    return self._n

  def __getitems__(self, keys):
    return [{"image": np.full((2, 2, 1), i % 255, np.uint8), "label": i % 2} for i in keys]


class FakeInfo:
  splits = {"train": None, "test": None}
  supervised_keys = ("image", "label")
  file_format = tfds.core.FileFormat.ARRAY_RECORD
  features = {"label": type("Label", (), {"num_classes": 2})()}

  def available_file_formats(self):
    return {tfds.core.FileFormat.ARRAY_RECORD}


class FakeBuilder:
  prepared: set = set()     # data dirs prepared so far
  calls: list = []          # (data_dir, file_format) of every download_and_prepare

  def __init__(self, name, data_dir=None, fail=False):
    self.name, self.data_dir, self.info, self._fail = name, data_dir or "~/tensorflow_datasets", FakeInfo(), fail

  def is_prepared(self):
    return self.data_dir in self.prepared

  def download_and_prepare(self, file_format=None):
    self.calls.append((self.data_dir, file_format))
    if self._fail:
      raise ConnectionError("no route to host\nsecond line")
    self.prepared.add(self.data_dir)

  def as_data_source(self):
    return {"train": FakeSource(10), "test": FakeSource(4)}


@pytest.fixture
def fake_tfds(monkeypatch):
  """Fake builders; returns a function setting whether TensorFlow looks importable and preparing fails."""
  FakeBuilder.prepared, FakeBuilder.calls = set(), []
  real_find_spec = importlib.util.find_spec

  def setup(tensorflow: bool, fail: bool = False):
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: FakeBuilder(name, data_dir, fail))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        (object() if tensorflow else None) if name == "tensorflow" else real_find_spec(name, *a)))
  return setup


def config(tmp_path):
  c = base().data
  c.update(dict(name="tfds", tfds_name="cifar10", tfds_dir=str(tmp_path), val_fraction=0.2))
  return c


def test_prepared_where_tensorflow_is_installed(fake_tfds, tmp_path):
  fake_tfds(tensorflow=True)
  dataset = data.load(config(tmp_path), seed=0)
  assert FakeBuilder.calls == [(str(tmp_path), "array_record")]   # into tfds_dir, in the format read without TF
  assert dataset.num_classes == 2 and len(dataset.test[1]) == 4 and len(dataset.train[1]) + len(dataset.val[1]) == 10
  data.load(config(tmp_path), seed=0)
  assert len(FakeBuilder.calls) == 1   # prepared once


def test_without_tensorflow_the_one_line_message(fake_tfds, tmp_path):
  fake_tfds(tensorflow=False)
  with pytest.raises(UserError, match=r"not prepared in .*; prepare it with TensorFlow installed .*tfds build cifar10"):
    data.load(config(tmp_path), seed=0)
  assert FakeBuilder.calls == []


def test_a_failed_preparation_ends_in_one_line(fake_tfds, tmp_path):
  fake_tfds(tensorflow=True, fail=True)
  with pytest.raises(UserError, match=r"could not be prepared .*ConnectionError: no route to host second line") as e:
    data.load(config(tmp_path), seed=0)
  assert "\n" not in str(e.value)
