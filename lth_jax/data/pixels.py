"""8-bit images stay uint8 on the device (a quarter of float32's memory) and are normalised inside jit.

A data set's inputs are either float32 (tabular data, or anything already scaled) or uint8 pixels, the
value v standing for v / 255. `Normalizer` turns either into what the model sees: per channel (last
axis), (x - mean) / std. On the host it is today's float32 arithmetic. On the device a uint8 pixel v of
channel c becomes `table[v, c]`, a lookup into those very host results for v = 0..255: the model's
inputs then equal the float pipeline's bit for bit on every backend, where computing them again on the
device would depend on how that backend rounds a division (XLA may turn one into a multiplication, and
TPUs do not divide in IEEE arithmetic).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


def to_float(x) -> np.ndarray:
  """Inputs as float32 on the host: uint8 pixels scaled into [0, 1] (v / 255), floats as they are."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(255)
  return x.astype(np.float32, copy=False)


def statistics(x_train, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (last axis) mean and std of the training inputs as floats; (0, 1) when not standardising."""
  channels = np.shape(x_train)[-1]
  if not standardize:
    return np.zeros(channels, np.float32), np.ones(channels, np.float32)
  x = to_float(x_train)   # uint8: a transient float copy, so the figures are those of the float pipeline
  axes = tuple(range(x.ndim - 1))
  std = x.std(axes)
  return x.mean(axes).astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)   # eq=False: hashed by identity, so jit caches stay per object
class Normalizer:
  mean: np.ndarray   # (C,) float32
  std: np.ndarray    # (C,) float32

  def host(self, x) -> np.ndarray:
    """Model inputs on the host, from uint8 pixels or from float inputs (e.g. corrupted images in [0, 1])."""
    return ((to_float(x) - self.mean) / self.std).astype(np.float32)

  @functools.cached_property
  def table(self) -> np.ndarray:
    """(256, C): the model input of pixel value v in channel c, by the host's arithmetic."""
    return self.host(np.repeat(np.arange(256, dtype=np.uint8)[:, None], len(self.mean), axis=1))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Model inputs of uint8 pixels (..., C), traceable under jit; other inputs are taken as model inputs."""
    if x.dtype != jnp.uint8:
      return x
    return jnp.asarray(self.table)[x.astype(jnp.int32), jnp.arange(x.shape[-1])]
