"""What the methods share: the dense run, pruning by the configured criterion, tickets and their fit.

A method receives an experiment `exp` (lth_jax.experiment.Experiment: config, data on the device,
model, theta_0, trainers by schedule, keys by purpose, `record` to build a RunRecord) and a recorder.
"""

import dataclasses
import time
from typing import Any

from lth_jax.methods import cohort
from lth_jax.methods.registry import Recorder
from lth_jax.sparsity import criteria
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity import pruning
from lth_jax.training import Trainer, TrainState


@dataclasses.dataclass
class DenseRun:
  state: TrainState          # trained dense network
  rewind_params: Any         # weights at config.prune.rewind_epoch (theta_0 when it is 0)
  rewind_batch_stats: Any
  test_accuracy: float
  prune_state: TrainState    # what one-shot pruning reads: `state`, or with prune.from_best the best one
  prune_epoch: int           # the epoch of prune_state's weights


@dataclasses.dataclass
class Ticket:
  """A pruned network ready to (re)train: `state` until `epochs` with `trainer`, recorded as `method`."""
  method: str
  name: str
  trainer: Trainer
  state: TrainState
  epochs: int
  rewind_params: Any         # what the recorder saves as the weights the ticket was reset to
  before: float | None       # accuracy_before_retrain
  started: float


def masked_accuracy(exp, params, batch_stats, masks) -> float:
  """Test accuracy of `params` under `masks` (no training)."""
  trainer = exp.trainer(exp.config.train.epochs)
  state = trainer.init_state(params, batch_stats, masks, exp.key("eval"))
  return trainer.evaluate(state, exp.data["test"])["accuracy"]


def prune(exp, params, masks, fraction: float, purpose: str):
  """config.prune's criterion, scope, exclusions and layer scales, applied to the remaining weights.

  `purpose` names this pruning event: a random criterion draws from its own key.
  """
  p = exp.config.prune
  context = criteria.Context(key=exp.key(f"prune/{purpose}"))
  return pruning.prune(p.criterion, params, masks, fraction, p.scope, exp.which, exp.layer_scale, context)


def fit_keeping_best(trainer: Trainer, state: TrainState, end_epoch: int, name: str, data: dict, best=None):
  """Program: `cohort.fit` in segments ending at each evaluated epoch; returns (state, history, best).

  `best` is (val_accuracy, epoch, state) of the first evaluated epoch with the highest validation
  accuracy so far (pass the previous call's to continue the search), as RunRecord.best_epoch picks it;
  its weights stay on the device.
  """
  history, start, every = [], int(state.step) // trainer.steps_per_epoch, trainer.eval_every
  while start < end_epoch:
    stop = min((start // every + 1) * every, end_epoch)
    state, rows = yield from cohort.fit(trainer, state, stop, name, data)
    history += rows
    accuracy = rows[-1]["val_accuracy"]
    if best is None or (accuracy is not None and accuracy > best[0]):
      best = (accuracy, stop, state)
    start = stop
  return state, history, best


def dense(exp, recorder: Recorder):
  """Program: train from theta_0 for config.train.epochs, keeping the weights at the rewind epoch
  (and with config.prune.from_best those of the best validation accuracy, which pruning then reads)."""
  started, epochs, rewind_epoch = time.time(), exp.config.train.epochs, exp.config.prune.rewind_epoch
  trainer = exp.trainer(epochs)
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks_lib.init(exp.init_params),
                             exp.key("dense"))
  if exp.config.prune.from_best:
    state, history, best = yield from fit_keeping_best(trainer, state, rewind_epoch, "dense", exp.data)
    rewind_params, rewind_stats = state.params, state.batch_stats
    state, rest, best = yield from fit_keeping_best(trainer, state, epochs, "dense", exp.data, best)
    _, prune_epoch, prune_state = best
  else:
    state, history = yield from cohort.fit(trainer, state, rewind_epoch, "dense", exp.data)
    rewind_params, rewind_stats = state.params, state.batch_stats
    state, rest = yield from cohort.fit(trainer, state, epochs, "dense", exp.data)
    prune_epoch, prune_state = epochs, state
  exp.evaluator.set_reference(trainer, state)
  record = exp.record(state, history + rest, "dense", 0, None, None, started)
  record = dataclasses.replace(record, accuracy_drop=0.0)
  recorder(record, state, rewind_params)
  return DenseRun(state, rewind_params, rewind_stats, record.test_accuracy, prune_state, prune_epoch)


def fit_tickets(exp, tickets: list[Ticket]):
  """Program: train every ticket (the cohort decides which train together); (state, history) each."""
  return (yield [cohort.Job(t.trainer, t.state, t.epochs, t.name, exp.data) for t in tickets])
