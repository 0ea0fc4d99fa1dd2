"""What several test files share: a small config, a recorder that keeps everything, and ways to run
a method's program or a single fit without the command line."""

import jax
import numpy as np

from lth_jax import methods
from lth_jax.config import base
from lth_jax.methods import cohort, lottery


def small_config(**overrides):
  c = base()
  c.data.name = "moons"
  c.data.n_samples = 400
  c.model.widths = (16, 16)
  c.train.epochs = 4
  c.train.batch_size = 32
  c.train.log_every = 0
  c.finetune.epochs = 2
  c.optimizer.weight_decay = 1e-3
  return override(c, **overrides)


def override(c, **overrides):
  """Set dotted keys: override(c, **{"train.epochs": 3})."""
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


class Collect:
  """A recorder that keeps every run as results.json has it, its final state and its reset weights."""

  def __init__(self):
    self.records, self.states, self.rewinds = [], [], []

  def __call__(self, record, state, rewind_params):
    self.records.append(record.as_dict())
    self.states.append(state)
    self.rewinds.append(rewind_params)


def leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def drive(program, vmap: bool = False):
  """Run one method program to its end; its return value."""
  return cohort.run([program], vmap)[0]


def run_method(exp, recorder) -> None:
  """config.method on `exp` alone, as the command line runs it for one seed."""
  methods.run([exp], [recorder])


def oneshot(exp, dense_run, sparsity: float, recorder, reset: str = "none"):
  """One ticket of a one-shot sweep; its final state."""
  return drive(lottery.oneshot_sweep(exp, dense_run, [sparsity], recorder, reset))[0]


def fit(trainer, state, data, end_epoch: int, name: str = ""):
  """Train one state: (state, history)."""
  states, histories = trainer.fit([state], data, end_epoch, [name])
  return states[0], histories[0]
