"""Image splits decoded on demand: data sets that do not fit in host memory, of images of any size (ImageNet).

A `LazyImages` stands where a split's uint8 array (N, H, W, C) would: it has the array's shape, dtype and
length, and indexing it (`x[i]`, `x[rows]`, `x[:n]`) decodes those images then and there into a numpy
array, each brought to `size` x `size` by the evaluation transform. `x.take(rows)` is the undecoded view of
some rows (a subset, a val split). Only the training epochs of a streamed run (lth_jax.data.stream) read it
the other way, `x.augmented(row, step)`: a random crop and flip whose randomness is drawn from
(seed, step, the image's index in its source) alone, so a batch's pixels do not depend on which worker
decoded which image, on how many workers there are, or on whether the run was interrupted and resumed.

The transforms are torchvision's, which the ImageNet references (OpenLTH, the Flax and PyTorch examples) use;
images of any mode are converted to RGB first, as torchvision's image-folder loader does:
  eval: resize the shorter side to `resize` (bilinear), then crop the centre `size` x `size`
        (torchvision's Resize(256) + CenterCrop(224));
  train: a crop of a random area fraction in `scale` of the image and a random aspect ratio in `ratio`
        (log-uniform), resized to `size` x `size` (bilinear), then a horizontal flip with probability 1/2
        (torchvision's RandomResizedCrop + RandomHorizontalFlip, same draws, same fallback).
"""

import concurrent.futures
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image

from lth_jax.errors import UserError

# Images the per-channel mean and std are estimated from (pixels.statistics): a seeded sample of the
# training split, as decoding all of ImageNet's 1.28M images for two numbers per channel would take hours.
STATISTICS_EXAMPLES = 512


def cannot_decode(where: str, error: Exception) -> UserError:
  """The one-line error for an image file PIL cannot read."""
  return UserError(f"{where}: cannot decode the image ({error}); remove or fix it (config.data.dir)")


def open_rgb(file, where: str) -> PIL.Image.Image:
  """The image in `file` (a path or a binary file object) decoded as RGB; a UserError naming `where` if PIL cannot."""
  try:
    with PIL.Image.open(file) as image:
      return image.convert("RGB")   # reads the pixels: a corrupt body fails here, inside the try
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise cannot_decode(where, e) from e


@dataclasses.dataclass(frozen=True)
class ImageFiles:
  """Image i of a list of files under `root` (the source of an image-folder split)."""
  root: Path
  names: np.ndarray   # (N,) bytes: the files' paths relative to root, UTF-8

  def __call__(self, i: int) -> PIL.Image.Image:
    path = self.root / self.names[i].decode()
    return open_rgb(path, str(path))


@dataclasses.dataclass(frozen=True)
class EncodedImages:
  """Image i of a random-access source of encoded examples (a TFDS data source read with the image's decoding
  skipped): `source[i][key]` holds the image file's bytes."""
  source: Any
  key: str
  name: str   # how messages name the source, e.g. "tfds:imagenet2012/train"

  def __call__(self, i: int) -> PIL.Image.Image:
    return open_rgb(io.BytesIO(self.source[i][self.key]), f"{self.name}[{i}]")


@dataclasses.dataclass(frozen=True)
class Crops:
  """How an image of any size becomes `size` x `size` pixels (see the module docstring)."""
  size: int                          # the side of every image the model sees
  resize: int                        # eval: the shorter side before the centre crop (>= size)
  scale: tuple[float, float] = (0.08, 1.0)       # train: the crop's fraction of the image's area
  ratio: tuple[float, float] = (3 / 4, 4 / 3)    # train: the crop's width / height

  def center(self, image: PIL.Image.Image) -> np.ndarray:
    """The evaluation transform: (size, size, 3) uint8."""
    width, height = image.size
    short = min(width, height)
    # torchvision's Resize(int): the shorter side becomes `resize`, the longer keeps the aspect (truncated).
    new = (self.resize, int(self.resize * height / short)) if width == short else \
        (int(self.resize * width / short), self.resize)
    resized = image.resize(new, PIL.Image.Resampling.BILINEAR)
    top, left = round((new[1] - self.size) / 2), round((new[0] - self.size) / 2)
    return np.asarray(resized.crop((left, top, left + self.size, top + self.size)), np.uint8)

  def random(self, image: PIL.Image.Image, rng: np.random.Generator) -> np.ndarray:
    """The training transform, its randomness drawn from `rng`: (size, size, 3) uint8."""
    top, left, height, width = self._window(*image.size[::-1], rng)
    crop = image.crop((left, top, left + width, top + height)).resize((self.size, self.size),
                                                                      PIL.Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
      crop = crop.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop, np.uint8)

  def _window(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop: torchvision's RandomResizedCrop.get_params -- ten tries
    at a window of the drawn area and aspect that fits, else the centre crop of the nearest allowed aspect."""
    area, log_ratio = height * width, (math.log(self.ratio[0]), math.log(self.ratio[1]))
    for _ in range(10):
      target = area * rng.uniform(*self.scale)
      aspect = math.exp(rng.uniform(*log_ratio))
      w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
      if 0 < w <= width and 0 < h <= height:
        return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < min(self.ratio):
      w, h = width, round(width / min(self.ratio))
    elif aspect > max(self.ratio):
      w, h = round(height * max(self.ratio)), height
    else:
      w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class LazyImages:
  """A split of images decoded on demand, standing in for its (N, size, size, 3) uint8 array.

  Args:
    source: image k of the source, any size and mode (an ImageFiles, an EncodedImages); called from worker
      threads.
    index: (N,) the source's images in this split, in order.
    crops: the transforms to size x size.
    seed: with the step and the source index, what each training crop is drawn from.
    workers: threads decoding the images of one read (0: one per CPU core).
  """

  def __init__(self, source: Callable[[int], PIL.Image.Image], index, crops: Crops, seed: int, workers: int = 0):
    self.source, self.index, self.crops, self.seed = source, np.asarray(index, np.int64), crops, seed
    self.workers = workers or os.cpu_count() or 1

  # -- what the code written for arrays reads -------------------------------------------------------

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (len(self.index), self.crops.size, self.crops.size, 3)

  dtype = np.dtype(np.uint8)
  ndim = 4

  @property
  def nbytes(self) -> int:
    """What the decoded split would take: why it is not decoded."""
    return math.prod(self.shape)

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, key) -> np.ndarray:
    """The evaluation transform of row `key` (an int: (size, size, 3)) or rows (a slice, int or bool array:
    (k, size, size, 3)), decoded by `workers` threads."""
    rows = np.arange(len(self))[key if isinstance(key, slice) else np.asarray(key)]
    if rows.ndim == 0:
      return self._center(rows)
    out = np.empty((rows.size, *self.shape[1:]), np.uint8)
    with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
      for i, image in enumerate(pool.map(self._center, rows.ravel())):
        out[i] = image
    return out.reshape(*rows.shape, *self.shape[1:])

  def _center(self, row) -> np.ndarray:
    return self.crops.center(self.source(int(self.index[row])))

  # -- what only lazy splits do ---------------------------------------------------------------------

  def take(self, rows) -> "LazyImages":
    """The rows `rows` (indices or a slice), still undecoded."""
    return LazyImages(self.source, self.index[rows], self.crops, self.seed, self.workers)

  def augmented(self, row: int, step: int) -> np.ndarray:
    """The training transform of row `row` at training iteration `step`: (size, size, 3) uint8."""
    k = int(self.index[row])
    return self.crops.random(self.source(k), np.random.default_rng((self.seed, step, k)))

  def sample(self, n: int, seed: int) -> np.ndarray:
    """Up to `n` rows drawn with `seed`, decoded (eval transform): what statistics are estimated from."""
    return self[np.sort(np.random.default_rng(seed).permutation(len(self))[:n])]


def images(source: Callable[[int], PIL.Image.Image], n: int, config, seed: int) -> LazyImages:
  """The `n` images of `source` as one split, transformed as config.data says (image_size, resize_size, crop_scale,
  crop_ratio; workers)."""
  crops = Crops(config.image_size, config.resize_size or round(config.image_size * 8 / 7), tuple(config.crop_scale),
                tuple(config.crop_ratio))
  return LazyImages(source, np.arange(n), crops, seed, config.workers)
