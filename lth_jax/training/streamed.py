"""Training and evaluation on streamed splits (lth_jax.data.stream.Split): the Trainer's data feeding for
config.data.pipeline=stream.

A streamed split is any `HostSplit`: host arrays x and y and `batches(rows)`, the host batches x[row], y[row]
in order (lth_jax.data.stream.Split reads them with grain). Nothing here imports grain or the data sources,
so `import lth_jax` stays cheap.

An epoch draws its order exactly as the memory path does (`step.shuffle`, the same key from the state),
takes it to the host, and has the stream gather those rows there; each batch then goes through the same
`step.train_step` (augmentation inside, with the same keys), so a streamed epoch gives the memory epoch's
numbers to float tolerance. Evaluation runs over fixed-size batches, summing loss and correct predictions
on the device: one compiled program whatever the split's size.
"""

import collections
import functools
from typing import Callable, Iterator, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lth_jax.training import step
from lth_jax.training.state import TrainState

READ_THREADS = 2   # grain's reading threads per stream (a trainer's Feeder)


@runtime_checkable
class HostSplit(Protocol):
  """A split the trainer streams: it stays on the host and reads batches of given example indices."""
  x: np.ndarray
  y: np.ndarray

  def batches(self, rows: np.ndarray, threads: int = 2, steps=None) -> Iterator[tuple]:
    """(x[row], y[row]) on the host for each row of `rows`, in order; `steps`: each batch's training iteration
    in a training epoch (host-side augmentation draws from it), None in evaluation."""


def placement(mesh: jax.sharding.Mesh | None, batch_axis: int = 0) -> Callable:
  """How host batches go to the devices: whole to the default device without a mesh; with one, split along
  `batch_axis` over its "data" axis, each device given its part.

  Every process holds the same host batch (the same seeded data and order), so each places the parts of
  its own devices and together they make one global array: the same call feeds one process or several.
  """
  if mesh is None:
    return jax.device_put
  sharding = NamedSharding(mesh, PartitionSpec(*[None] * batch_axis, "data"))
  return lambda tree: jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, sharding, lambda i: a[i]), tree)


def to_device(batches: Iterator, place: Callable = jax.device_put, size: int = 2) -> Iterator:
  """The items of `batches` (pytrees of numpy arrays) placed on the devices by `place`, `size` transfers kept
  in flight (transfers return before the copy ends, so the next batches travel while a step computes)."""
  queue = collections.deque()
  for batch in batches:
    queue.append(place(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def eval_rows(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows of `batch_size` indices covering 0..n-1 in order, the last padded with index 0, and each row's
  validity (1.0 for a real example, 0.0 for padding): every batch has one shape, so one compiled program."""
  batches = -(-n // batch_size)
  index = np.arange(batches * batch_size)
  valid = (index < n).astype(np.float32)
  return np.where(index < n, index, 0).reshape(batches, batch_size), valid.reshape(batches, batch_size)


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

  def __init__(self, recipe: step.Recipe, compiled: Callable, threads: int = READ_THREADS):
    self.recipe, self.threads, self._compiled = recipe, threads, compiled
    self._step = compiled(functools.partial(fed_step, recipe), (0, 0, 0))
    self._sums = compiled(functools.partial(sums, recipe), (0, None, None, None), False)
    self._orders = {}   # number of examples -> compiled (one, stacked) orders

  def _order(self, n: int, batched: bool):
    if n not in self._orders:
      self._orders[n] = self._compiled(functools.partial(order, self.recipe, n), (0,))
    return self._orders[n][batched]

  def epoch(self, state: TrainState, split: HostSplit, batched: bool, first: int, last: int,
            after_step: Callable | None = None):
    """Steps `first`..`last`-1 of an epoch on `split` (as Trainer.train_epoch): (state, mean metrics)."""
    start = int(np.ravel(state.step)[0])   # the iteration of step `first` (stacked states share it)
    state, rows = self._order(len(split.y), batched)(state)
    rows = np.asarray(rows)                                     # (steps, batch) or (members, steps, batch)
    rows = (rows.swapaxes(0, 1) if batched else rows)[first:last]   # step-major: a batch per step
    metrics = []
    place = placement(self.recipe.mesh, batch_axis=1 if batched else 0)   # batched: (members, batch, ...)
    batches = split.batches(rows, self.threads, steps=np.arange(start, start + len(rows)))
    for i, (x, y) in zip(range(first, last), to_device(batches, place)):
      state, m = self._step[batched](state, x, y)
      metrics.append(m)
      if after_step is not None:
        after_step(state, i + 1)
    return state, jax.tree.map(lambda *m: jnp.mean(jnp.stack(m), 0), *metrics)

  def evaluate(self, variables, split: HostSplit, batched: bool) -> dict:
    """{"loss", "accuracy"} on `split` (per member when `batched`), left on the device."""
    n = len(split.y)
    rows, valid = eval_rows(n, step.eval_size(self.recipe, n))
    total = None
    place = placement(self.recipe.mesh)
    for (x, y), v in zip(to_device(split.batches(rows, self.threads), place), to_device(valid, place)):
      part = self._sums[batched](variables, x, y, v)
      total = part if total is None else jax.tree.map(jnp.add, total, part)
    return jax.tree.map(lambda s: s / n, total)

  def logits(self, logits_fn: Callable, variables, x) -> np.ndarray:
    """`logits_fn(variables, batch)` over host inputs `x` (an array, or a HostSplit read by its own
    `batches`) batch by batch, on the host: a split is never whole on the device."""
    n = len(x.y) if isinstance(x, HostSplit) else len(x)
    rows, _ = eval_rows(n, step.eval_size(self.recipe, n))
    inputs = (b for b, _ in x.batches(rows, self.threads)) if isinstance(x, HostSplit) else (x[r] for r in rows)
    out = [np.asarray(logits_fn(variables, batch)) for batch in to_device(inputs, placement(self.recipe.mesh))]
    return np.concatenate(out)[:n]
