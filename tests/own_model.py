"""A user's own models and data source, as the command line names them: tests.own_model:Net and so on.

    python main.py --config.model.name=tests.own_model:Net --config.model.kwargs.width=8 \
        --config.data.name=tests.own_model:load

Nothing here imports lth_jax's model zoo: this is what a user writes in a package of their own.
"""

import math

import flax.linen as nn
import numpy as np
from flax import nnx

from lth_jax.data import Dataset, split

NOT_A_MODEL = 3   # for the error of a name that is no Flax module class


class Net(nn.Module):
  """A linen MLP; num_classes comes from the data. Its __call__ takes no `train`: it has no BatchNorm."""
  width: int
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.width, name="hidden")(x.reshape((x.shape[0], -1))))
    return nn.Dense(self.num_classes, name="output")(x)


class NnxNet(nnx.Module):
  """An NNX MLP with BatchNorm: an NNX layer needs its input size up front, hence `input_shape`."""

  def __init__(self, input_shape, width: int, num_classes: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(math.prod(input_shape), width, rngs=rngs)
    self.norm = nnx.BatchNorm(width, rngs=rngs)
    self.output = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.norm(self.hidden(x.reshape((x.shape[0], -1)))))
    return self.output(x)


def load(config, seed: int) -> Dataset:
  """Three Gaussian blobs in 4 dimensions, `config.kwargs.n` points (default 240), split as config.data says."""
  n = config.kwargs.get("n", 240)
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n)
  centres = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
  x = centres[y] + rng.normal(size=(n, 4))
  train, val, test = split(x, y, seed, val_fraction=config.val_fraction, test_fraction=config.test_fraction)
  return Dataset("blobs", train, val, test, num_classes=3)


def not_a_dataset(config, seed: int):
  del config, seed
  return {"train": None}
