"""The pruning methods, each a composition of train, prune and reset on an `Experiment`.

Every run hands a record (the fields DESIGN.md lists) and its final train state to `recorder.add`,
which reports and saves it. `accuracy_before_retrain` is always the test accuracy of the trained
weights the mask was computed from, with the mask applied, before any reset or retraining.
"""

import dataclasses
import time
from typing import Any, Callable

from lth_jax import evaluation
from lth_jax import masks as masks_lib
from lth_jax import pruning
from lth_jax.experiment import STRUCTURED, Experiment
from lth_jax.train import TrainState

Recorder = Callable[[dict, TrainState, Any], None]   # (record, final state, rewind params) -> None


@dataclasses.dataclass
class DenseRun:
  state: TrainState          # trained dense network
  rewind_params: Any         # weights at config.prune.rewind_epoch (theta_0 when it is 0)
  rewind_batch_stats: Any
  test_accuracy: float


def _masked_accuracy(exp: Experiment, params, batch_stats, masks) -> float:
  trainer = exp.trainer(exp.config.train.epochs)
  state = trainer.init_state(params, batch_stats, masks, exp.key("eval"))
  return trainer.evaluate(state, exp.data["test"])["accuracy"]


def _prune(exp: Experiment, params, masks, fraction: float):
  p = exp.config.prune
  return pruning.magnitude(params, masks, fraction, p.scope, exp.which, exp.layer_scale)


def dense(exp: Experiment, recorder: Recorder) -> DenseRun:
  """Train from theta_0 for config.train.epochs, keeping the weights at the rewind epoch."""
  started, epochs, rewind_epoch = time.time(), exp.config.train.epochs, exp.config.prune.rewind_epoch
  trainer = exp.trainer(epochs)
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks_lib.init(exp.init_params),
                             exp.key("dense"))
  state, history = trainer.fit(state, exp.data, rewind_epoch, "dense", exp.config.train.log_every)
  rewind_params, rewind_stats = state.params, state.batch_stats
  state, rest = trainer.fit(state, exp.data, epochs, "dense", exp.config.train.log_every)
  exp.evaluator.set_reference(trainer, state)
  record = evaluation.record(exp, state, history + rest, "dense", 0, None, None, started)
  record["accuracy_drop"] = 0.0
  recorder(record, state, rewind_params)
  return DenseRun(state, rewind_params, rewind_stats, record["test_accuracy"])


def _retrain(exp: Experiment, params, batch_stats, masks, start_epoch: int, epochs: int, finetune: bool,
             name: str):
  trainer = exp.trainer(epochs, finetune)
  state = trainer.init_state(params, batch_stats, masks, exp.key(name), start_epoch)
  return trainer.fit(state, exp.data, epochs, name, exp.config.train.log_every)


ONESHOT_METHODS = {"none": "oneshot", "rewind": "oneshot_reinit", "random": "oneshot_random"}


@dataclasses.dataclass
class _Ticket:
  """A pruned network ready to retrain."""
  method: str
  name: str
  trainer: Any
  state: TrainState
  epochs: int
  rewind_params: Any
  before: float
  started: float


def _oneshot_ticket(exp: Experiment, dense_run: DenseRun, sparsity: float, reset: str) -> _Ticket:
  started, cfg = time.time(), exp.config
  name = f"{ONESHOT_METHODS[reset]}@{sparsity:g}"
  trained = dense_run.state
  masks = _prune(exp, trained.params, masks_lib.init(trained.params), sparsity)
  before = _masked_accuracy(exp, trained.params, trained.batch_stats, masks)
  if reset == "none":
    params, stats, start, epochs, finetune = trained.params, trained.batch_stats, 0, cfg.finetune.epochs, True
  elif reset == "rewind":
    params, stats = dense_run.rewind_params, dense_run.rewind_batch_stats
    start, epochs, finetune = cfg.prune.rewind_epoch, cfg.train.epochs, False
  else:
    params, stats = exp.init_variables(exp.key(f"reinit/{name}"))
    start, epochs, finetune = 0, cfg.train.epochs, False
  trainer = exp.trainer(epochs, finetune)
  state = trainer.init_state(params, stats, masks, exp.key(name), start)
  return _Ticket(ONESHOT_METHODS[reset], name, trainer, state, epochs, params, before, started)


def _fit_tickets(exp: Experiment, tickets: list[_Ticket]) -> list:
  """(state, history) per ticket. With config.train.vmap, tickets that share a trainer (one schedule,
  one optimizer) and a start epoch train together in one vmapped program."""
  log_every = exp.config.train.log_every
  if not exp.config.train.vmap:
    return [t.trainer.fit(t.state, exp.data, t.epochs, t.name, log_every) for t in tickets]
  groups = {}
  for i, t in enumerate(tickets):   # exp.trainer is cached: one schedule is one trainer object
    groups.setdefault((id(t.trainer), int(t.state.step)), []).append(i)
  fitted = [None] * len(tickets)
  for members in groups.values():
    first = tickets[members[0]]
    states, histories = first.trainer.fit_many([tickets[i].state for i in members], exp.data, first.epochs,
                                               [tickets[i].name for i in members], log_every)
    for i, state, history in zip(members, states, histories):
      fitted[i] = (state, history)
  return fitted


def oneshot_sweep(exp: Experiment, dense_run: DenseRun, sparsities, recorder: Recorder,
                  reset: str = "none", more_resets=()) -> list[TrainState]:
  """Prune each sparsity of the trained dense weights at once, then retrain.

  reset="none": fine-tune from the trained weights (config.finetune); "rewind": the lottery ticket,
  surviving weights back to theta_0 or the rewind epoch; "random": a fresh initialisation.
  `more_resets`: further sweeps of the same sparsities, recorded after this one (compare runs them
  together). With config.train.vmap the tickets that share a schedule train in one vmapped program.
  """
  tickets = [_oneshot_ticket(exp, dense_run, s, r) for r in (reset, *more_resets) for s in sparsities]
  fitted = _fit_tickets(exp, tickets)
  for ticket, (state, history) in zip(tickets, fitted):
    recorder(evaluation.record(exp, state, history, ticket.method, 1, dense_run.test_accuracy,
                               ticket.before, ticket.started), state, ticket.rewind_params)
  return [state for state, _ in fitted]


def oneshot(exp: Experiment, dense_run: DenseRun, sparsity: float, recorder: Recorder,
            reset: str = "none") -> TrainState:
  """One ticket of `oneshot_sweep`."""
  return oneshot_sweep(exp, dense_run, [sparsity], recorder, reset)[0]


def iterative(exp: Experiment, dense_run: DenseRun, target: float, recorder: Recorder) -> TrainState:
  """`rounds` rounds of prune + reset + retrain starting from the trained dense network.

  Each round removes `rate` of the remaining weights (config.iterative.rate, or the rate that reaches
  `target` after `rounds`). reset="init"/"rewind": lottery-ticket rewinding and a full retraining;
  reset="none": keep training the pruned weights for `round_epochs` with the fine-tuning optimizer.
  Each round records the accuracy of its mask at the previous round's weights (accuracy_before_retrain)
  and at the trained dense weights (accuracy_at_dense_weights), the ResNet-20 seed's @w(t-1) and @w0.
  The last round trains `final_epochs` instead when that is set (the CNN-pruning seed's 5 then 100).
  Every `random_control_every`-th round also trains its mask from a random initialisation.
  """
  cfg = exp.config.iterative
  rate = cfg.rate or pruning.rate_per_round(target, cfg.rounds)
  state = dense_run.state
  masks = masks_lib.init(state.params)
  for round_ in range(1, cfg.rounds + 1):
    started, name = time.time(), f"iterative round {round_}"
    masks = _prune(exp, state.params, masks, rate)
    before = _masked_accuracy(exp, state.params, state.batch_stats, masks)
    at_dense = _masked_accuracy(exp, dense_run.state.params, dense_run.state.batch_stats, masks)
    last = round_ == cfg.rounds
    if cfg.reset == "none":
      epochs = cfg.final_epochs if last and cfg.final_epochs else cfg.round_epochs or exp.config.finetune.epochs
      params, stats, start, finetune = state.params, state.batch_stats, 0, True
    else:
      epochs = cfg.final_epochs if last and cfg.final_epochs else cfg.round_epochs or exp.config.train.epochs
      if cfg.reset == "rewind":  # theta_0 itself when rewind_epoch is 0
        params, stats, start = dense_run.rewind_params, dense_run.rewind_batch_stats, exp.config.prune.rewind_epoch
      else:
        params, stats, start = exp.init_params, exp.init_batch_stats, 0
      finetune = False
    state, history = _retrain(exp, params, stats, masks, start, epochs, finetune, name)
    recorder(evaluation.record(exp, state, history, "iterative", round_, dense_run.test_accuracy, before,
                             started, rate_per_round=rate, accuracy_at_dense_weights=at_dense), state, params)
    if cfg.random_control_every and round_ % cfg.random_control_every == 0:
      _random_control(exp, masks, epochs, round_, dense_run.test_accuracy, before, recorder)
  return state


def _random_control(exp: Experiment, masks, epochs: int, round_: int, dense_accuracy: float, before: float,
                    recorder: Recorder) -> None:
  """The Lottery Ticket paper's control: this round's mask, trained from a fresh random initialisation."""
  started, name = time.time(), f"iterative_random round {round_}"
  params, stats = exp.init_variables(exp.key(f"reinit/{name}"))
  state, history = _retrain(exp, params, stats, masks, 0, epochs, False, name)
  recorder(evaluation.record(exp, state, history, "iterative_random", round_, dense_accuracy, before, started),
           state, params)


def dynamic(exp: Experiment, sparsity: float, recorder: Recorder, dense_accuracy: float | None = None):
  """One training run from theta_0 that prunes at fractions `config.dynamic.at` of it, never resetting.

  Each event removes config.dynamic.fraction of the remaining weights (or the fraction that reaches
  `sparsity` after all events); the optimizer state and schedule carry on across events.
  """
  started, cfg, epochs = time.time(), exp.config.dynamic, exp.config.train.epochs
  fraction = cfg.fraction or pruning.rate_per_round(sparsity, len(cfg.at))
  prune_epochs = [int(round(a * epochs)) for a in cfg.at]
  name = f"dynamic@{sparsity:g}"
  trainer = exp.trainer(epochs)
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks_lib.init(exp.init_params),
                             exp.key(name))
  history, events, before = [], [], None
  for epoch in prune_epochs:
    state, rows = trainer.fit(state, exp.data, epoch, name, exp.config.train.log_every)
    history += rows
    masks = _prune(exp, state.params, state.masks, fraction)
    state = state.replace(masks=masks, params=masks_lib.apply(state.params, masks))
    before = trainer.evaluate(state, exp.data["test"])["accuracy"]
    events.append({"epoch": epoch, "sparsity": masks_lib.sparsity(masks, exp.which),
                   "test_accuracy": before})
  state, rows = trainer.fit(state, exp.data, epochs, name, exp.config.train.log_every)
  recorder(evaluation.record(exp, state, history + rows, "dynamic", len(events), dense_accuracy, before, started,
                           prune_events=events, fraction_per_event=fraction), state, exp.init_params)
  return state


ONESHOT_RESETS = {method: reset for reset, method in ONESHOT_METHODS.items()}


def run(exp: Experiment, recorder: Recorder) -> None:
  """Run config.method; `compare` shares one dense run among the listed methods and sparsities."""
  method = exp.config.method
  if method in STRUCTURED:
    from lth_jax import methods_structured  # here, not at the top: it imports this module
    getattr(methods_structured, method)(exp, recorder)
    return
  if method == "dynamic":
    dynamic(exp, exp.config.prune.sparsity, recorder)
    return
  dense_run = dense(exp, recorder)
  methods = list(exp.config.compare.methods) if method == "compare" else [method]
  sparsities = list(exp.config.compare.sparsities) if method == "compare" else [exp.config.prune.sparsity]
  # The one-shot sweeps run together where the first of them is listed: with config.train.vmap, the
  # tickets of every sweep that share a schedule (oneshot_reinit and oneshot_random) share one program.
  resets = [ONESHOT_RESETS[name] for name in methods if name in ONESHOT_RESETS]
  for name in methods:
    if name in ONESHOT_RESETS:
      if ONESHOT_RESETS[name] == resets[0]:
        oneshot_sweep(exp, dense_run, sparsities, recorder, resets[0], resets[1:])
    elif name == "iterative":
      iterative(exp, dense_run, max(sparsities), recorder)
    elif name == "dynamic":
      for s in sparsities:
        dynamic(exp, s, recorder, dense_run.test_accuracy)
