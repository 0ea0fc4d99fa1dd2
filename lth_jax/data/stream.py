"""Streamed splits (config.data.pipeline): examples stay on the host and go to the device batch by batch.

`memory` puts every split on the device once and gathers batches there; `stream` keeps a split in host
memory (numpy, or an .npz memory map) and feeds it by batches: grain reads the rows of example indices it is
handed on host threads (`grain.MapDataset` over the rows, `grain.ReadOptions`), and the trainer
(lth_jax.training.streamed) keeps a few batches transferred ahead of the step that consumes them. The rows
are the ones the memory path would gather on the device (the trainer draws them with the same
permutation), and the stream delivers the same raw values -- uint8 pixels stay uint8 -- so augmentation
and normalisation run where they always do, inside the compiled step with the same keys, and the two
pipelines give the same numbers.

A split of images decoded on demand (lth_jax.data.lazy.LazyImages, data.image_size > 0) streams the same way,
but grain maps over single examples, so that the split's `workers` threads decode and resize the images of a
batch side by side; a training epoch's examples get their random crops (`LazyImages.augmented`), keyed by the
iteration each batch trains at. Such a split has no memory pipeline to equal: it always streams.

`auto` streams when the splits would take more than `data.device_budget_mb` of device memory.
"""

import math
from typing import Iterator, NamedTuple

import grain
import numpy as np

from lth_jax.data import lazy
from lth_jax.errors import check

PIPELINES = ("memory", "stream", "auto")


class Split(NamedTuple):
  """A split on the host, (x, y) as the registry's Dataset holds it; the trainer feeds it batch by batch."""
  x: np.ndarray   # (N, ...) uint8 pixels or float32 inputs, or a lazy.LazyImages
  y: np.ndarray   # (N,) int32

  def batches(self, rows: np.ndarray, threads: int = 2, prefetch: int = 2, steps=None) -> Iterator[tuple]:
    """Host batches (x[row], y[row]), one per row of example indices, in order.

    Args:
      rows: (steps, *batch_shape) int example indices; batch i is x[rows[i]], shaped (*batch_shape, ...).
      threads: grain's reading threads (0: read in the calling thread); a LazyImages split reads with its own
        `workers`.
      prefetch: batches grain reads ahead.
      steps: the training iteration of each batch, for a training epoch: a LazyImages split then gives each
        image its random crop at that iteration. None (evaluation): the evaluation transform. Arrays ignore it.
    Returns:
      An iterator of (x, y) numpy batches.
    """
    rows = np.asarray(rows)
    if len(rows) == 0:
      return iter(())
    if isinstance(self.x, lazy.LazyImages):
      return _decoded_batches(self.x, self.y, rows, prefetch, steps)
    read = grain.MapDataset.source(rows).map(lambda row: (self.x[row], self.y[row]))
    return iter(read.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)))


def _decoded_batches(x: lazy.LazyImages, y: np.ndarray, rows: np.ndarray, prefetch: int, steps) -> Iterator[tuple]:
  """Split.batches of a LazyImages split: one grain element per example, so that `x.workers` threads decode
  the examples of a batch at once; batched again in order."""
  shape = rows.shape[1:]
  size = math.prod(shape)
  flat = rows.reshape(-1)
  at = None if steps is None else np.repeat(np.asarray(steps), size)   # each example's training iteration

  def read(k: int):
    image = x[int(flat[k])] if at is None else x.augmented(int(flat[k]), int(at[k]))
    return image, y[flat[k]]

  examples = grain.MapDataset.range(len(flat)).map(read).to_iter_dataset(
      grain.ReadOptions(num_threads=x.workers, prefetch_buffer_size=prefetch * size))
  return iter(examples.batch(size).map(lambda b: (b[0].reshape(*shape, *b[0].shape[1:]), b[1].reshape(shape))))


def choose(pipeline: str, split_bytes: int, budget_mb: float) -> str:
  """"memory" or "stream" for config.data.pipeline = `pipeline`, the splits taking `split_bytes` on the device.

  Args:
    pipeline: one of PIPELINES.
    split_bytes: what the train, val and test splits would take on the device, in bytes.
    budget_mb: the device memory `auto` lets them take (config.data.device_budget_mb), in MiB.
  Returns:
    "memory" or "stream".
  """
  check(pipeline in PIPELINES, f"config.data.pipeline={pipeline!r}; allowed: {', '.join(PIPELINES)}")
  check(budget_mb > 0, f"config.data.device_budget_mb={budget_mb} must be > 0")
  if pipeline != "auto":
    return pipeline
  return "stream" if split_bytes > budget_mb * 2**20 else "memory"
