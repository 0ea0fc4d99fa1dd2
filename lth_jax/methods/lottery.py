"""The lottery-ticket family: one-shot pruning (fine-tune, rewind, random re-init), iterative magnitude
pruning with rewinding, and dynamic pruning during one training run.

Each is a cohort program (lth_jax.methods.cohort) for one seed. Every run hands a RunRecord and its
final train state to the recorder. `accuracy_before_retrain` is always the test accuracy of the
trained weights the mask was computed from, with the mask applied, before any reset or retraining.
"""

import ml_collections

from lth_jax.errors import check
from lth_jax.methods import cohort
from lth_jax.methods import common
from lth_jax.methods.common import DenseRun, Ticket
from lth_jax.methods.registry import Recorder, register
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity import pruning

RESETS = ("init", "rewind", "none")
# The sanity checks of "Missing the Mark" trained beside IMP's ticket on its own round's mask (iterative.controls).
ROUND_CONTROLS = ("reinit", "shuffle", "invert")
ONESHOT_METHODS = {"none": "oneshot", "rewind": "oneshot_reinit", "random": "oneshot_random"}
ONESHOT_RESETS = {method: reset for reset, method in ONESHOT_METHODS.items()}


def validate_iterative(config: ml_collections.ConfigDict) -> None:
  it = config.iterative
  check(it.rounds >= 1, f"config.iterative.rounds={it.rounds} must be >= 1")
  check(0.0 <= it.rate < 1.0, f"config.iterative.rate={it.rate} must be in [0, 1) (0 derives it from "
        "config.prune.sparsity)")
  check(it.reset in RESETS, f"config.iterative.reset={it.reset!r}; allowed: {', '.join(RESETS)}")
  for key, meaning in (("round_epochs", "0 = train.epochs"), ("final_epochs", "0 = round_epochs"),
                       ("random_control_every", "0 = never")):
    check(isinstance(it[key], int) and it[key] >= 0, f"config.iterative.{key}={it[key]!r} must be an integer >= 0 "
          f"({meaning})")
  controls = list(it.controls)
  check(all(c in ROUND_CONTROLS for c in controls) and len(set(controls)) == len(controls),
        f"config.iterative.controls={tuple(it.controls)}; each at most once, from: {', '.join(ROUND_CONTROLS)}")
  check(not controls or config.prune.control == "none",
        f"config.iterative.controls={tuple(it.controls)} trains the controls beside the ticket; "
        f"config.prune.control={config.prune.control!r} would change the ticket's own lineage: leave it 'none'")
  check("shuffle" not in controls or config.prune.pattern == "unstructured",
        f"config.iterative.controls holds 'shuffle', which permutes each layer's mask and breaks "
        f"config.prune.pattern={config.prune.pattern!r}'s groups; use reinit or invert")
  rounds = list(it.control_rounds)
  check(all(isinstance(r, int) and 1 <= r <= it.rounds for r in rounds) and rounds == sorted(set(rounds)),
        f"config.iterative.control_rounds={tuple(it.control_rounds)} must be increasing rounds in 1..{it.rounds} "
        "(() = every round)")
  if it.reset == "rewind":
    for key in ("round_epochs", "final_epochs"):
      check(not it[key] or it[key] > config.prune.rewind_epoch,
            f"config.iterative.{key}={it[key]} must exceed config.prune.rewind_epoch="
            f"{config.prune.rewind_epoch}: a rewound round resumes the schedule there")


def validate_dynamic(config: ml_collections.ConfigDict) -> None:
  at = config.dynamic.at
  check(all(0.0 < a < 1.0 for a in at) and list(at) == sorted(set(at)),
        f"config.dynamic.at={tuple(at)} must be increasing fractions of training in (0, 1)")
  check(0.0 <= config.dynamic.fraction < 1.0, f"config.dynamic.fraction={config.dynamic.fraction} must be in [0, 1)")


# -- dense and one-shot ------------------------------------------------------------------------------

def dense_epochs(exp) -> int:
  return exp.config.train.epochs


@register("dense", planned=dense_epochs)
def dense(exp, recorder: Recorder):
  yield from common.dense(exp, recorder)


def oneshot_ticket(exp, dense_run: DenseRun, sparsity: float, reset: str) -> Ticket:
  """The dense network pruned to `sparsity` at once and reset: "none" keeps the trained weights
  (fine-tuned by config.finetune), "rewind" rewinds them to theta_0 or the rewind epoch (the lottery
  ticket), "random" draws a fresh initialisation (the control)."""
  started, cfg = exp.now(), exp.config
  name = f"{ONESHOT_METHODS[reset]}@{sparsity:g}"
  trained = dense_run.prune_state
  masks = common.prune(exp, trained.params, masks_lib.init(trained.params), sparsity, name, trained.batch_stats)
  before = common.masked_accuracy(exp, trained.params, trained.batch_stats, masks)
  if reset == "none":
    params, stats, start, epochs, finetune = trained.params, trained.batch_stats, 0, cfg.finetune.epochs, True
  elif reset == "rewind":
    params, stats = dense_run.rewind_params, dense_run.rewind_batch_stats
    start, epochs, finetune = dense_run.rewind_step, cfg.train.epochs, False
  else:
    params, stats = exp.init_variables(exp.key(f"reinit/{name}"))
    start, epochs, finetune = 0, cfg.train.epochs, False
  if reset != "random":
    params, stats = common.control_weights(exp, params, stats, name)
  trainer = exp.trainer(epochs, finetune)
  state = common.start_state(trainer, params, stats, masks, exp.key(name), start)
  return Ticket(ONESHOT_METHODS[reset], name, trainer, state, epochs, params, before, started)


def oneshot_sweep(exp, dense_run: DenseRun, sparsities, recorder: Recorder, reset: str = "none"):
  """Program: prune each sparsity of the trained dense weights at once, reset, retrain."""
  tickets = [oneshot_ticket(exp, dense_run, s, reset) for s in sparsities]
  fitted = yield from common.fit_tickets(exp, tickets)
  for ticket, (state, history) in zip(tickets, fitted):
    record = exp.record(state, history, ticket.method, 1, dense_run.test_accuracy, ticket.before, ticket.started)
    record = record.with_extra(pruned_from_epoch=dense_run.prune_epoch)
    recorder(common.with_control(exp, record), state, ticket.rewind_params)
  return [state for state, _ in fitted]


def oneshot_epochs(exp, sparsities, reset: str) -> int:
  """What `oneshot_sweep` trains: config.finetune.epochs, or the rest of the schedule from the reset point."""
  cfg = exp.config
  if reset == "none":
    per_ticket = cfg.finetune.epochs
  else:
    per_ticket = common.epochs_from(exp, cfg.train.epochs, common.rewind_step(exp) if reset == "rewind" else 0)
  return len(sparsities) * per_ticket


def _register_oneshot(method: str, reset: str) -> None:
  def sweep(exp, dense_run, sparsities, recorder):
    return oneshot_sweep(exp, dense_run, sparsities, recorder, reset)

  def run(exp, recorder):
    dense_run = yield from common.dense(exp, recorder)
    yield from sweep(exp, dense_run, [exp.config.prune.sparsity], recorder)

  def sweep_planned(exp, sparsities):
    return oneshot_epochs(exp, sparsities, reset)
  register(method, sweep=sweep, sweep_planned=sweep_planned,
           planned=lambda exp: dense_epochs(exp) + sweep_planned(exp, [exp.config.prune.sparsity]))(run)


for _reset, _method in ONESHOT_METHODS.items():
  _register_oneshot(_method, _reset)


# -- iterative ---------------------------------------------------------------------------------------

def iterative_sweep(exp, dense_run: DenseRun, sparsities, recorder: Recorder):
  """Program: `rounds` rounds of prune + reset + retrain from the trained dense network, to max(sparsities).

  Each round removes `rate` of the remaining weights (config.iterative.rate, or the rate that reaches
  the target after `rounds`). reset="init"/"rewind": lottery-ticket rewinding and a full retraining;
  reset="none": keep training the pruned weights for `round_epochs` with the fine-tuning optimizer.
  Each round records the accuracy of its mask at the previous round's weights (accuracy_before_retrain)
  and at the trained dense weights (accuracy_at_dense_weights), the ResNet-20 seed's @w(t-1) and @w0.
  The last round trains `final_epochs` instead when that is set (the CNN-pruning seed's 5 then 100).
  Every `random_control_every`-th round also trains its mask from a random initialisation. At each of
  `control_rounds` (all when empty), each of `iterative.controls` trains beside the ticket, applied to that
  round's mask only, so the lineage stays the ticket's (`_round_control`).
  Under config.prune.pattern (n:m) each round keeps n of every m as its floor and the last one exactly
  n of every m (`common.pattern_fraction`): the rounds are k:m-or-denser masks narrowing to n:m.
  """
  cfg = exp.config.iterative
  rate = cfg.rate or pruning.rate_per_round(max(sparsities), cfg.rounds)
  state = dense_run.prune_state
  masks = masks_lib.init(state.params)
  for round_ in range(1, cfg.rounds + 1):
    started, name = exp.now(), f"iterative round {round_}"
    fraction = common.pattern_fraction(exp, masks, rate, last=round_ == cfg.rounds)
    previous, masks = masks, common.prune(exp, state.params, masks, fraction, name, state.batch_stats)
    before = common.masked_accuracy(exp, state.params, state.batch_stats, masks)
    at_dense = common.masked_accuracy(exp, dense_run.prune_state.params, dense_run.prune_state.batch_stats, masks)
    epochs = round_epochs(exp, round_)
    if cfg.reset == "none":
      params, stats, start, finetune = state.params, state.batch_stats, 0, True
    else:
      if cfg.reset == "rewind":  # theta_0 itself when rewind_epoch is 0
        params, stats, start = dense_run.rewind_params, dense_run.rewind_batch_stats, dense_run.rewind_step
      else:
        params, stats, start = exp.init_params, exp.init_batch_stats, 0
      finetune = False
    params, stats = common.control_weights(exp, params, stats, name)
    trainer = exp.trainer(epochs, finetune)
    tickets = [Ticket("iterative", name, trainer, common.start_state(trainer, params, stats, masks, exp.key(name), start),
                      epochs, params, before, started)]
    if cfg.random_control_every and round_ % cfg.random_control_every == 0:
      tickets.append(_random_control(exp, masks, epochs, round_, before))
    controls = [None] * len(tickets)
    if not cfg.control_rounds or round_ in cfg.control_rounds:
      for control in cfg.controls:
        tickets.append(_round_control(exp, control, round_, trainer, (params, stats, start), masks,
                                      (state, previous, fraction), epochs))
        controls.append(control)
    fitted = yield from common.fit_tickets(exp, tickets)
    state = fitted[0][0]
    for i, (ticket, control, (trained, history)) in enumerate(zip(tickets, controls, fitted)):
      record = exp.record(trained, history, ticket.method, round_, dense_run.test_accuracy, ticket.before,
                          ticket.started)
      record = common.with_control(exp, record)
      if i == 0:
        record = record.with_extra(rate_per_round=rate, accuracy_at_dense_weights=at_dense)
      if control is not None:
        record = record.with_extra(control=control)
      recorder(record, trained, ticket.rewind_params)
  return state


def _round_control(exp, control: str, round_: int, trainer, start, masks, pruned_from, epochs: int) -> Ticket:
  """A sanity check of "Missing the Mark" on this round's IMP mask, trained beside the ticket: `reinit` the
  mask from a fresh random initialisation; `shuffle` the mask permuted within each layer (the same counts),
  from the ticket's start weights; `invert` this round's selection inverted -- of the weights the previous
  round kept, those the criterion scores lowest stay (the same count) -- from the ticket's start weights.

  `start`: the ticket's (params, batch_stats, step); `pruned_from`: (the previous round's trained state, its
  mask, the fraction this round removed)."""
  started, name = exp.now(), f"iterative+{control} round {round_}"
  params, stats, step = start
  state, previous, fraction = pruned_from
  if control == "reinit":
    params, stats = exp.init_variables(exp.key(f"reinit/{name}"))
    step = 0
  elif control == "shuffle":
    masks = masks_lib.shuffle(exp.key(f"shuffle/{name}"), masks, exp.which)
  else:
    masks = common.prune(exp, state.params, previous, fraction, name, state.batch_stats, invert=True)
  before = common.masked_accuracy(exp, state.params, state.batch_stats, masks)
  return Ticket("iterative", name, trainer, common.start_state(trainer, params, stats, masks, exp.key(name), step),
                epochs, params, before, started)


def _random_control(exp, masks, epochs: int, round_: int, before: float) -> Ticket:
  """The Lottery Ticket paper's control: this round's mask, trained from a fresh random initialisation."""
  started, name = exp.now(), f"iterative_random round {round_}"
  params, stats = exp.init_variables(exp.key(f"reinit/{name}"))
  trainer = exp.trainer(epochs)
  return Ticket("iterative_random", name, trainer, trainer.init_state(params, stats, masks, exp.key(name)),
                epochs, params, before, started)


def round_epochs(exp, round_: int) -> int:
  """The schedule round `round_` of `iterative_sweep` trains to (from 0, or the rewind point)."""
  cfg, config = exp.config.iterative, exp.config
  if cfg.final_epochs and round_ == cfg.rounds:
    return cfg.final_epochs
  return cfg.round_epochs or (config.finetune.epochs if cfg.reset == "none" else config.train.epochs)


def iterative_epochs(exp, sparsities=()) -> int:
  """What `iterative_sweep` trains: one chain of rounds whatever the sparsities, plus its random controls."""
  cfg = exp.config.iterative
  start = common.rewind_step(exp) if cfg.reset == "rewind" else 0
  total = 0
  for round_ in range(1, cfg.rounds + 1):
    total += common.epochs_from(exp, round_epochs(exp, round_), start)
    if cfg.random_control_every and round_ % cfg.random_control_every == 0:
      total += round_epochs(exp, round_)   # the control trains from a fresh init, from iteration 0
    if not cfg.control_rounds or round_ in cfg.control_rounds:   # reinit trains from iteration 0, the others from start
      epochs = round_epochs(exp, round_)
      total += sum(epochs if c == "reinit" else common.epochs_from(exp, epochs, start) for c in cfg.controls)
  return total


@register("iterative", validate=validate_iterative, sweep=iterative_sweep, sweep_planned=iterative_epochs,
          planned=lambda exp: dense_epochs(exp) + iterative_epochs(exp))
def iterative(exp, recorder: Recorder):
  dense_run = yield from common.dense(exp, recorder)
  yield from iterative_sweep(exp, dense_run, [exp.config.prune.sparsity], recorder)


# -- dynamic -----------------------------------------------------------------------------------------

def dynamic_run(exp, sparsity: float, recorder: Recorder, dense_accuracy: float | None = None):
  """Program: one training run from theta_0 that prunes at fractions `config.dynamic.at` of it, no reset.

  Each event removes config.dynamic.fraction of the remaining weights (or the fraction that reaches
  `sparsity` after all events); the optimizer state and schedule carry on across events.
  """
  started, cfg, epochs = exp.now(), exp.config.dynamic, exp.config.train.epochs
  fraction = cfg.fraction or pruning.rate_per_round(sparsity, len(cfg.at))
  prune_epochs = [int(round(a * epochs)) for a in cfg.at]
  name = f"dynamic@{sparsity:g}"
  trainer = exp.trainer(epochs)
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks_lib.init(exp.init_params),
                             exp.key(name))
  history, events, before = [], [], None
  for i, epoch in enumerate(prune_epochs):
    state, rows = yield from cohort.fit(trainer, state, epoch, name, exp.data)
    history += rows
    event_fraction = common.pattern_fraction(exp, state.masks, fraction, last=i == len(prune_epochs) - 1)
    masks = common.prune(exp, state.params, state.masks, event_fraction, f"{name}/{epoch}", state.batch_stats)
    state = state.replace(masks=masks, params=masks_lib.apply(state.params, masks))
    before = trainer.evaluate(state, exp.data["test"])["accuracy"]
    events.append({"epoch": epoch, "sparsity": masks_lib.sparsity(masks, exp.which), "test_accuracy": before})
  state, rows = yield from cohort.fit(trainer, state, epochs, name, exp.data)
  record = exp.record(state, history + rows, "dynamic", len(events), dense_accuracy, before, started)
  record = common.with_control(exp, record).with_extra(prune_events=events, fraction_per_event=fraction)
  recorder(record, state, exp.init_params)
  return state


def dynamic_sweep(exp, dense_run: DenseRun, sparsities, recorder: Recorder):
  """Program: a dynamic run per sparsity, side by side (with train.vmap, one program)."""
  return (yield from cohort.together(dynamic_run(exp, s, recorder, dense_run.test_accuracy) for s in sparsities))


@register("dynamic", validate=validate_dynamic, sweep=dynamic_sweep, planned=dense_epochs,
          sweep_planned=lambda exp, sparsities: len(sparsities) * dense_epochs(exp))
def dynamic(exp, recorder: Recorder):
  yield from dynamic_run(exp, exp.config.prune.sparsity, recorder)
