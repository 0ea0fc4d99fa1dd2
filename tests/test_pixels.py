"""8-bit images on the device as uint8, normalised inside jit: the same numbers as the float pipeline
(data.device_dtype=float32, which normalises on the host as lth_jax always did) in a quarter of the memory."""

import functools

import jax
import numpy as np
import pytest

from lth_jax import experiment
from lth_jax.config import base
from lth_jax.data import pixels
from lth_jax.methods import common
from lth_jax.training import step
from tests.helpers import Collect, drive


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("pixels") / "images.npz"
  # a channel held constant: its std is 0, which normalisation replaces by 1
  x = rng.integers(0, 256, (120, 8, 8, 3), dtype=np.uint8)
  x[..., 2] = 17
  np.savez(path, x_train=x[:96], y_train=rng.integers(0, 4, 96), x_test=x[96:], y_test=np.arange(24) % 4)
  return path


def build(path, device_dtype: str):
  c = base()
  c.data.name, c.data.dir, c.data.augment, c.data.val_fraction = "npz", str(path), "crop_flip", 0.25
  c.data.device_dtype = device_dtype
  c.model.name = "conv2"
  c.train.epochs, c.train.batch_size, c.train.eval_batch_size, c.train.log_every = 2, 16, 16, 0
  c.optimizer.lr = 0.01
  c.metrics.ood, c.metrics.corruptions, c.metrics.severities = ("uniform_noise",), ("contrast",), (2,)
  c.metrics.similarity_eps = (0.1,)
  return experiment.build(c)


@pytest.fixture(scope="module")
def pair(images):
  return build(images, "auto"), build(images, "float32")


def test_uint8_on_the_device_in_a_quarter_of_the_memory(pair):
  uint8, float32 = pair
  for split in ("train", "val", "test"):
    x_u, x_f = uint8.data[split][0], float32.data[split][0]
    assert x_u.dtype == np.uint8 and x_f.dtype == np.float32
    assert 4 * x_u.nbytes == x_f.nbytes
    # normalised on the device (a lookup of the host's results): exactly the host's float pipeline
    np.testing.assert_array_equal(np.asarray(uint8.inputs(x_u)), np.asarray(x_f))
  np.testing.assert_array_equal(uint8.raw_test[0], float32.raw_test[0])


def test_the_same_augmented_batches(pair):
  uint8, float32 = pair
  order = np.random.default_rng(1).permutation(uint8.n_train)[:16]
  batches = []
  for exp in pair:
    recipe = exp.trainer(exp.config.train.epochs).recipe
    batch = jax.jit(functools.partial(step.batch_inputs, recipe))(jax.random.key(5), exp.data["train"][0][order])
    batches.append(np.asarray(batch))
  np.testing.assert_array_equal(batches[0], batches[1])
  assert batches[0].dtype == np.float32
  # the crops pad with zeros of the normalised image (the mean pixel), as the float pipeline always has
  unaugmented = np.asarray(float32.data["train"][0][order])
  assert not np.array_equal(batches[0], unaugmented) and np.any(np.all(batches[0] == 0, axis=-1))


def test_the_same_training_and_evaluation(pair):
  records, states = [], []
  for exp in pair:
    collect = Collect()
    drive(common.dense(exp, collect))
    records.append(collect.records[0])
    states.append(collect.states[0])
  a, b = records
  assert [row["train_loss"] for row in a["curve"]] == [row["train_loss"] for row in b["curve"]]
  for key in ("test_accuracy", "ece", "nll", "ood", "corruption_accuracy", "similarity"):
    assert a.get(key) == b.get(key), key
  for x, y in zip(jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_normalizer_lookup_equals_the_host_arithmetic():
  rng = np.random.default_rng(2)
  normalizer = pixels.Normalizer(rng.random(3).astype(np.float32), (0.1 + rng.random(3)).astype(np.float32))
  x = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, 3))
  np.testing.assert_array_equal(np.asarray(jax.jit(normalizer)(x)), normalizer.host(x))
  floats = rng.random((4, 3)).astype(np.float32)   # already model inputs: passed through
  assert normalizer(floats) is floats
