"""Training and evaluation on streamed splits (lth_jax.data.stream.Split): the Trainer's data feeding for
config.data.pipeline=stream.

An epoch draws its order exactly as the memory path does (`step.shuffle`, the same key from the state),
takes it to the host, and has the stream gather those rows there; each batch then goes through the same
`step.train_step` (augmentation inside, with the same keys), so a streamed epoch gives the memory epoch's
numbers to float tolerance. Evaluation runs over fixed-size batches, summing loss and correct predictions
on the device: one compiled program whatever the split's size.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax.data import stream
from lth_jax.training import step
from lth_jax.training.state import TrainState


def fed_step(recipe: step.Recipe, state: TrainState, x, y):
  """One train step on a batch the host gathered: `step.batch_step` without the gather."""
  return step.train_step(recipe, state, (step.split_batch(recipe, x), step.split_batch(recipe, y)))


def order(recipe: step.Recipe, n: int, state: TrainState):
  """`step.shuffle`'s epoch order for a split of `n` examples, which need not be on the device."""
  return step.shuffle(recipe, state, jax.ShapeDtypeStruct((n,), jnp.uint8))


def sums(recipe: step.Recipe, variables, x, y, valid) -> dict:
  """{"loss": summed cross-entropy, "accuracy": number correct} over the examples of a batch where `valid` is 1."""
  out = step.apply_model(recipe, variables, step.split_batch(recipe, x), train=False)[0]
  return {"loss": jnp.sum(step.cross_entropy(out, y) * valid),
          "accuracy": jnp.sum((jnp.argmax(out, -1) == y) * valid)}


class Feeder:
  """A trainer's compiled programs for streamed splits.

  Args:
    recipe: the trainer's step.Recipe.
    compiled: (fn, in_axes, donate) -> (fn for one state, fn for states stacked), the trainer's jit.
    threads: grain's reading threads per stream.
  """

  def __init__(self, recipe: step.Recipe, compiled: Callable, threads: int = 2):
    self.recipe, self.threads, self._compiled = recipe, threads, compiled
    self._step = compiled(functools.partial(fed_step, recipe), (0, 0, 0))
    self._sums = compiled(functools.partial(sums, recipe), (0, None, None, None), False)
    self._orders = {}   # number of examples -> compiled (one, stacked) orders

  def _order(self, n: int, batched: bool):
    if n not in self._orders:
      self._orders[n] = self._compiled(functools.partial(order, self.recipe, n), (0,))
    return self._orders[n][batched]

  def epoch(self, state: TrainState, split: stream.Split, batched: bool, first: int, last: int,
            after_step: Callable | None = None):
    """Steps `first`..`last`-1 of an epoch on `split` (as Trainer.train_epoch): (state, mean metrics)."""
    state, rows = self._order(len(split.y), batched)(state)
    rows = np.asarray(rows)                                     # (steps, batch) or (members, steps, batch)
    rows = (rows.swapaxes(0, 1) if batched else rows)[first:last]   # step-major: a batch per step
    metrics = []
    for i, (x, y) in zip(range(first, last), stream.to_device(stream.read(split, rows, self.threads))):
      state, m = self._step[batched](state, x, y)
      metrics.append(m)
      if after_step is not None:
        after_step(state, i + 1)
    return state, jax.tree.map(lambda *m: jnp.mean(jnp.stack(m), 0), *metrics)

  def evaluate(self, variables, split: stream.Split, batched: bool) -> dict:
    """{"loss", "accuracy"} on `split` (per member when `batched`), left on the device."""
    n = len(split.y)
    rows, valid = stream.eval_rows(n, self._eval_size(n))
    total = None
    for (x, y), v in zip(stream.to_device(stream.read(split, rows, self.threads)), valid):
      part = self._sums[batched](variables, x, y, v)
      total = part if total is None else jax.tree.map(jnp.add, total, part)
    return jax.tree.map(lambda s: s / n, total)

  def logits(self, logits_fn: Callable, variables, x: np.ndarray) -> np.ndarray:
    """`logits_fn(variables, batch)` over host inputs `x` batch by batch, on the host: a split is never whole
    on the device."""
    rows, _ = stream.eval_rows(len(x), self._eval_size(len(x)))
    split = stream.Split(x, np.zeros(len(x), np.int32))
    out = [np.asarray(logits_fn(variables, b)) for b, _ in stream.to_device(stream.read(split, rows, self.threads))]
    return np.concatenate(out)[:len(x)]

  def _eval_size(self, n: int) -> int:
    """step.logits's batch size: eval_batch_size, or the split rounded up to the devices when smaller."""
    shards = self.recipe.mesh.size if self.recipe.mesh is not None else 1
    return min(self.recipe.eval_batch_size, -(-n // shards) * shards)
