"""Training-time data augmentation in pure JAX, applied to a batch inside the jitted train step.

`config.data.augment` picks one by name from `AUGMENTATIONS`; "none" is `None`, so the train step can skip
the call (and the key split) altogether.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from lth_jax.errors import UserError

Augmentation = Callable[[jax.Array, jax.Array], jax.Array]  # (key, batch) -> batch of the same shape


def crop_flip(key: jax.Array, x: jax.Array, pad: int = 4) -> jax.Array:
  """The standard CIFAR augmentation: a random crop of the zero-padded image, then a random horizontal flip.

  Args:
    key: a PRNG key; the same key gives the same crops and flips.
    x: images (B, H, W, C).
    pad: pixels of zeros added on each side before cropping back to (H, W).
  """
  batch, height, width, channels = x.shape
  crop_key, flip_key = jax.random.split(key)
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  # Each example gets its own offsets; dynamic_slice takes traced start indices, so this stays jittable.
  offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)
  crop = lambda image, offset: jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(flip_key, 0.5, (batch, 1, 1, 1))
  return jnp.where(flip, cropped[:, :, ::-1], cropped)


AUGMENTATIONS: dict[str, Augmentation | None] = {"none": None, "crop_flip": crop_flip}


def get(name: str) -> Augmentation | None:
  if name not in AUGMENTATIONS:
    raise UserError(f"config.data.augment={name!r} is not an augmentation; allowed: {', '.join(AUGMENTATIONS)}")
  return AUGMENTATIONS[name]
