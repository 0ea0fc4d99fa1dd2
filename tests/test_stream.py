"""data.pipeline=stream: splits stay on the host and are fed batch by batch, giving the memory pipeline's numbers.

The reference is the memory pipeline on the same image folder and seed: the same examples in the same order
with the same augmentation, so the same curves, weights and figures to float tolerance (only the order of
float sums in evaluation, batch by batch instead of whole, differs).
"""

import io

import jax
import numpy as np
import PIL.Image
import pytest

from lth_jax import experiment
from lth_jax.config import base
from lth_jax.data import stream
from lth_jax.methods import common
from lth_jax.training import streamed
from tests.helpers import Collect, drive

CLASSES = ("cat", "dog", "owl")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """An image folder tree: 3 classes, 8 train and 3 test 8x8 RGB images each, PNG and JPEG."""
  root = tmp_path_factory.mktemp("stream") / "images"
  rng = np.random.default_rng(0)
  for split, n in (("train", 8), ("test", 3)):
    for c, name in enumerate(CLASSES):
      (root / split / name).mkdir(parents=True)
      for i in range(n):
        pixels = np.clip(rng.normal(60 + 60 * c, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
        kind = "png" if i % 2 else "jpeg"
        buffer = io.BytesIO()
        PIL.Image.fromarray(pixels).save(buffer, format=kind.upper())
        (root / split / name / f"{i}.{kind}").write_bytes(buffer.getvalue())
  return root


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def build(root, pipeline: str, budget_mb: float = 4096.0):
  c = base()
  c.data.name, c.data.dir, c.data.augment, c.data.val_fraction = "image_folder", str(root), "crop_flip", 0.25
  c.data.pipeline, c.data.device_budget_mb = pipeline, budget_mb
  c.model.name, c.model.widths = "mlp", (16,)   # small to compile; the images are still cropped and flipped
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size, c.train.log_every = 2, 4, 4, 0
  c.optimizer.lr = 0.05
  c.metrics.ood, c.metrics.similarity_eps = ("uniform_noise",), ()
  return experiment.build(c)


@pytest.fixture(scope="module")
def pair(folder):
  """The memory and the streamed experiment on `folder`, built once: their trainers are compiled once."""
  return build(folder, "memory"), build(folder, "stream")


def test_stream_gives_the_numbers_of_memory(pair):
  runs = []
  for exp, streamed in zip(pair, (False, True)):
    assert isinstance(exp.data["train"], stream.Split) == streamed
    collect = Collect()
    drive(common.dense(exp, collect))
    runs.append((collect.records[0], collect.states[0]))
  (memory, memory_state), (streamed, streamed_state) = runs
  assert streamed["curve"][0]["train_loss"] != memory["curve"][-1]["train_loss"]   # it trained
  for row_m, row_s in zip(memory["curve"], streamed["curve"], strict=True):
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
      np.testing.assert_allclose(row_s[key], row_m[key], rtol=1e-5, atol=1e-6, err_msg=key)
  for key in ("test_accuracy", "ece", "nll"):
    np.testing.assert_allclose(streamed[key], memory[key], rtol=1e-5, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(memory_state.params), jax.tree.leaves(streamed_state.params), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_stacked_tickets_stream_their_own_orders(pair):
  """Two states trained as one vmapped program each draw their own order, streamed as in memory."""
  results = []
  for exp in pair:
    trainer = exp.trainer(exp.config.train.epochs)
    masks = jax.tree.map(lambda p: np.ones(p.shape, np.float32), exp.init_params)
    states = [trainer.init_state(exp.init_params, exp.init_batch_stats, masks, jax.random.key(k)) for k in (1, 2)]
    states, histories = trainer.fit(states, exp.data, 1, ["a", "b"])
    results.append(([h[-1]["train_loss"] for h in histories], [h[-1]["test_loss"] for h in histories]))
  (memory_train, memory_test), (stream_train, stream_test) = results
  assert memory_train[0] != memory_train[1]   # different orders and augmentation keys
  np.testing.assert_allclose(stream_train, memory_train, rtol=1e-5)
  np.testing.assert_allclose(stream_test, memory_test, rtol=1e-5)


def test_auto_streams_only_past_the_budget(folder):
  # 24 train + 3 test images of 8*8*3 uint8 bytes, split 18 / 6 / 9, plus 4-byte labels: 33 * 196 bytes
  assert stream.choose("auto", 33 * 196, 1.0) == "memory"
  assert stream.choose("auto", 2**20 + 1, 1.0) == "stream"
  assert stream.choose("stream", 0, 1.0) == "stream" and stream.choose("memory", 2**30, 1.0) == "memory"
  assert not isinstance(build(folder, "auto").data["train"], stream.Split)
  assert isinstance(build(folder, "auto", budget_mb=33 * 196 / 2**20 * 0.99).data["train"], stream.Split)


def test_a_split_reads_the_rows_in_order():
  x = np.arange(40, dtype=np.uint8).reshape(10, 2, 2)
  y = np.arange(10, dtype=np.int32) * 3
  rows = np.array([[3, 1], [0, 9], [7, 7]])
  split = stream.Split(x, y)
  assert isinstance(split, streamed.HostSplit) and not isinstance((x, y), streamed.HostSplit)
  batches = list(streamed.to_device(split.batches(rows, threads=2), size=1))
  assert len(batches) == 3
  for (bx, by), row in zip(batches, rows):
    assert bx.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(bx), x[row])
    np.testing.assert_array_equal(np.asarray(by), 3 * row)
  rows, valid = streamed.eval_rows(5, 2)
  np.testing.assert_array_equal(rows, [[0, 1], [2, 3], [4, 0]])
  np.testing.assert_array_equal(valid, [[1, 1], [1, 1], [1, 0]])
