"""What the methods share: the dense run, pruning by the configured criterion, tickets and their fit.

A method receives an experiment `exp` (lth_jax.experiment.Experiment: config, data on the device,
model, theta_0, trainers by schedule, keys by purpose, `record` to build a RunRecord) and a recorder.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lth_jax.errors import UserError, check
from lth_jax.methods import cohort
from lth_jax.methods.registry import Recorder
from lth_jax.sparsity import criteria
from lth_jax.sparsity import distribution
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity import nm
from lth_jax.sparsity import pruning
from lth_jax.training import Trainer, TrainState
from lth_jax.training import step

# The sanity checks of "Missing the Mark" (Frankle et al. 2021), on any method's mask before retraining.
CONTROLS = ("none", "shuffle", "reinit", "invert")
# Methods that cannot keep an N:M pattern: channel pruning, and drop-and-grow, which moves single weights
# across groups.
NO_PATTERN = {"slimming": "prunes whole channels", "early_bird": "prunes whole channels",
              "set": "drops and regrows weights one by one, across the groups",
              "rigl": "drops and regrows weights one by one, across the groups"}


def validate_prune(config: ml_collections.ConfigDict) -> None:
  p = config.prune
  check(p.control in CONTROLS, f"config.prune.control={p.control!r}; allowed: {', '.join(CONTROLS)}")
  check(p.synflow_iterations >= 1, f"config.prune.synflow_iterations={p.synflow_iterations} must be >= 1")
  check(p.score_examples >= 1, f"config.prune.score_examples={p.score_examples} must be >= 1")
  check(p.score_batchnorm in ("auto",) + criteria.BATCHNORM_MODES,
        f"config.prune.score_batchnorm={p.score_batchnorm!r}; allowed: auto, {', '.join(criteria.BATCHNORM_MODES)}")
  check(p.grasp_temperature > 0, f"config.prune.grasp_temperature={p.grasp_temperature} must be > 0")
  check(p.rewind_step >= 0, f"config.prune.rewind_step={p.rewind_step} must be >= 0")
  check(not (p.rewind_step and p.rewind_epoch), f"config.prune.rewind_step={p.rewind_step} and "
        f"config.prune.rewind_epoch={p.rewind_epoch} are both set; set one (0 = theta_0)")
  validate_pattern(config)


def prune_pattern(config: ml_collections.ConfigDict) -> nm.NM | None:
  """config.prune.pattern parsed: None for "unstructured", else the N:M pattern."""
  try:
    return nm.parse(config.prune.pattern)
  except ValueError as e:
    raise UserError(f"config.prune.pattern={e}") from None


def validate_pattern(config: ml_collections.ConfigDict) -> None:
  """An N:M pattern fixes every pruned layer's sparsity at 1 - n/m: prune.sparsity (and compare's
  sparsities) must say so, and what would give layers other sparsities, or break the groups, is refused."""
  pattern = prune_pattern(config)
  if pattern is None:
    return
  p, key = config.prune, f"config.prune.pattern='{pattern}'"
  fixed = f"{key} fixes the sparsity at 1 - {pattern.n}/{pattern.m} = {pattern.sparsity:g}"
  check(abs(p.sparsity - pattern.sparsity) < 1e-9, f"{fixed}; set config.prune.sparsity={pattern.sparsity:g} "
        f"(it is {p.sparsity:g})")
  running = {config.method} | (set(config.compare.methods) if config.method == "compare" else set())
  if config.method == "compare":
    check(all(abs(s - pattern.sparsity) < 1e-9 for s in config.compare.sparsities),
          f"{fixed}; set config.compare.sparsities=({pattern.sparsity:g},) (it is {tuple(config.compare.sparsities)})")
  blocked = sorted(running & set(NO_PATTERN))
  check(not blocked, lambda: f"{key} cannot apply to method {blocked[0]!r}, which {NO_PATTERN[blocked[0]]}; "
        "use config.prune.pattern='unstructured', or a one-shot, iterative, dynamic, prune_at_init, gradual or "
        "static method")
  check(p.distribution in ("scope", "global", "uniform", "uniform_first_dense"),
        f"{key} gives every layer the sparsity {pattern.sparsity:g}; config.prune.distribution={p.distribution!r} "
        "would give layers their own: use scope, global, uniform or uniform_first_dense")
  check(not p.layer_scale, f"{key} gives every layer the same sparsity; config.prune.layer_scale="
        f"{tuple(p.layer_scale)} would scale it per layer: leave it empty")
  check(p.control != "shuffle", f"{key}: config.prune.control='shuffle' permutes each layer's mask, which breaks "
        "the groups; use none, reinit or invert")
  # a set rate per round or per event ends wherever it compounds to; 0 derives it from the sparsity
  check("iterative" not in running or not config.iterative.rate,
        f"{fixed}; config.iterative.rate={config.iterative.rate} would end elsewhere: leave it 0")
  check("dynamic" not in running or not config.dynamic.fraction,
        f"{fixed}; config.dynamic.fraction={config.dynamic.fraction} would end elsewhere: leave it 0")


def check_pattern_fits(exp) -> None:
  """Every prunable layer can hold config.prune.pattern: m divides its input dimension (nothing is padded)."""
  pattern = prune_pattern(exp.config)
  if pattern is None:
    return
  for (name, leaf), prunable in zip(masks_lib.named_leaves(exp.init_params), jax.tree.leaves(exp.which)):
    why = nm.misfit(leaf.shape, pattern) if prunable else None
    check(why is None, lambda: f"config.prune.pattern='{pattern}' cannot apply to {name}: {why}; leave the layer "
          f"out (config.prune.exclude=('{name}',)) or choose an M that divides it")


def distribution_kind(config) -> str:
  """config.prune.distribution, with "scope" read from prune.scope: global -> "global", layerwise -> "uniform"."""
  p = config.prune
  if p.distribution != "scope":
    return p.distribution
  return "global" if p.scope == "global" else "uniform"


def pattern_fraction(exp, masks, fraction: float, last: bool) -> float:
  """`fraction` of the remaining weights, or at a schedule's last pruning event under config.prune.pattern
  the fraction that leaves exactly the pattern's n of every m. Each event removes round(fraction x
  remaining), and the roundings of a per-event rate compound: the last event would land a few weights
  off the pattern's count."""
  pattern = prune_pattern(exp.config)
  if pattern is None or not last:
    return fraction
  remaining, total = masks_lib.count(masks, exp.which)
  return (remaining - (total - round(pattern.sparsity * total))) / remaining


@dataclasses.dataclass
class DenseRun:
  state: TrainState          # trained dense network
  rewind_params: Any         # weights at config.prune.rewind_epoch or rewind_step (theta_0 when both are 0)
  rewind_batch_stats: Any
  test_accuracy: float
  rewind_step: int = 0       # the iteration the rewind weights are at: a rewound ticket's schedule resumes there
  prune_state: TrainState | None = None   # what one-shot pruning reads: `state`, or with prune.from_best the best one
  prune_epoch: int = 0       # the epoch of prune_state's weights


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


def score_batchnorm(config) -> str:
  """"train" or "eval": the BatchNorm mode config.prune.criterion scores in (prune.score_batchnorm;
  "auto": the mode its authors' code scores in, `criteria.batchnorm_mode`)."""
  mode = config.prune.score_batchnorm
  return criteria.batchnorm_mode(config.prune.criterion) if mode == "auto" else mode


def criterion_context(exp, purpose: str, batch_stats=None) -> criteria.Context:
  """What any criterion may read: a key for `purpose`, `config.prune.score_examples` training examples
  (drawn once per seed), the mean cross-entropy on them and the logits, the prunable leaves and GraSP's
  temperature. The network runs with BatchNorm in `score_batchnorm`'s mode: train (the scored batch's
  own statistics) or eval (the running statistics `batch_stats`, default theta_0's)."""
  recipe = exp.trainer(exp.config.train.epochs).recipe
  stats = exp.init_batch_stats if batch_stats is None else batch_stats
  train = score_batchnorm(exp.config) == "train"
  x, y = exp.data["train"]
  n = min(exp.config.prune.score_examples, int(x.shape[0]))
  chosen = jax.random.permutation(exp.key("prune/score_batch"), x.shape[0])[:n]

  def logits_fn(params, inputs):
    variables = {"params": params, **({"batch_stats": stats} if stats else {})}
    return step.apply_model(recipe, variables, inputs, train=train)[0]

  def loss_fn(params, batch):
    return jnp.mean(step.cross_entropy(logits_fn(params, batch[0]), batch[1]))

  return criteria.Context(key=exp.key(f"prune/{purpose}"), batch=(x[chosen], y[chosen]), loss_fn=loss_fn,
                          logits_fn=logits_fn, which=exp.which,
                          grasp_temperature=exp.config.prune.grasp_temperature)


def prune(exp, params, masks, fraction: float, purpose: str, batch_stats=None, iterations: int = 1,
          invert: bool = False):
  """config.prune's criterion, scope, exclusions and layer scales, applied to the remaining weights,
  then config.prune.control's change to the mask (shuffle: permuted within each layer; invert: the
  lowest scores kept; reinit acts on the weights, `control_weights`). `invert`: the lowest scores kept
  whatever config.prune.control says.

  `purpose` names this pruning event: random criteria and the shuffle draw from its own keys. The
  criterion rescores `iterations` times on the exponential schedule (`pruning.prune_iteratively`);
  SynFlow always `config.prune.synflow_iterations` times.
  """
  p = exp.config.prune
  context = criterion_context(exp, purpose, batch_stats)
  score = criteria.get(p.criterion)
  if p.control == "invert" or invert:
    score = criteria.inverted(score)
  jitted = jax.jit(lambda params_, masks_: score(params_, masks_, context))   # SynFlow rescores 100 times
  criterion = lambda params_, masks_, _: jitted(params_, masks_)   # noqa: E731
  iterations = p.synflow_iterations if p.criterion == "synflow" else iterations
  pattern = prune_pattern(exp.config)
  if p.distribution != "scope" or pattern is not None:
    pruned = pruning.prune_distributed(criterion, params, masks, fraction, distribution_kind(exp.config), exp.which,
                                       distribution.parse_map(p.layer_sparsity), context, iterations, pattern)
  else:
    pruned = pruning.prune_iteratively(criterion, params, masks, fraction, iterations, p.scope, exp.which,
                                       exp.layer_scale, context)
  if p.control == "shuffle":
    pruned = masks_lib.shuffle(exp.key(f"shuffle/{purpose}"), pruned, exp.which)
  return pruned


def control_weights(exp, params, batch_stats, name: str):
  """The weights a ticket trains from: fresh random ones under config.prune.control="reinit"."""
  if exp.config.prune.control == "reinit":
    return exp.init_variables(exp.key(f"reinit/{name}"))
  return params, batch_stats


def with_control(exp, record):
  """The run's record, naming the control its mask or weights carry."""
  return record.with_extra(control=exp.config.prune.control)


def rewind_step(exp) -> int:
  """The dense run's iteration tickets rewind to: config.prune.rewind_step, or rewind_epoch's first step."""
  p, spe = exp.config.prune, exp.steps_per_epoch
  step = p.rewind_step or p.rewind_epoch * spe
  check(step < exp.config.train.epochs * spe, f"config.prune.rewind_step={p.rewind_step} must be below the "
        f"dense run's {exp.config.train.epochs * spe} steps (config.train.epochs x {spe} steps per epoch)")
  return step


def epochs_from(exp, epochs: int, step: int = 0) -> int:
  """Epochs a fit to the global epoch `epochs` trains from iteration `step`: the epoch a ticket rewound
  inside it finishes counts whole, as in its history. For the progress bar's plan."""
  return max(0, epochs - step // exp.steps_per_epoch)


def start_state(trainer: Trainer, params, batch_stats, masks, key, step: int) -> TrainState:
  """A ticket's fresh train state at global iteration `step`: the schedule (and Trainer.fit) resume there."""
  state = trainer.init_state(params, batch_stats, masks, key)
  return state.replace(step=jnp.asarray(step, jnp.int32))


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
  """Program: train from theta_0 for config.train.epochs, keeping the weights at the rewind iteration
  (and with config.prune.from_best those of the best validation accuracy, which pruning then reads).

  The epochs before it train as segments of the one dense run; the rewind weights inside an epoch are
  that epoch's first steps replayed from its start (`Trainer.advance`), the very steps the dense run
  takes next, so they are the dense run's weights after exactly `rewind_step` iterations.
  """
  started, epochs, from_best = exp.now(), exp.config.train.epochs, exp.config.prune.from_best
  trainer = exp.trainer(epochs)
  rewind_epoch, within = divmod(rewind_step(exp), trainer.steps_per_epoch)
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks_lib.init(exp.init_params),
                             exp.key("dense"))
  if from_best:
    state, history, best = yield from fit_keeping_best(trainer, state, rewind_epoch, "dense", exp.data)
  else:
    state, history = yield from cohort.fit(trainer, state, rewind_epoch, "dense", exp.data)
  rewound = trainer.advance(state, exp.data, within) if within else state
  rewind_params, rewind_stats = rewound.params, rewound.batch_stats
  if from_best:
    state, rest, best = yield from fit_keeping_best(trainer, state, epochs, "dense", exp.data, best)
    _, prune_epoch, prune_state = best
  else:
    state, rest = yield from cohort.fit(trainer, state, epochs, "dense", exp.data)
    prune_epoch, prune_state = epochs, state
  exp.evaluator.set_reference(trainer, state)
  record = exp.record(state, history + rest, "dense", 0, None, None, started)
  record = dataclasses.replace(record, accuracy_drop=0.0)
  recorder(record, state, rewind_params)
  return DenseRun(state, rewind_params, rewind_stats, record.test_accuracy, int(rewound.step), prune_state,
                  prune_epoch)


def fit_tickets(exp, tickets: list[Ticket]):
  """Program: train every ticket (the cohort decides which train together); (state, history) each."""
  return (yield [cohort.Job(t.trainer, t.state, t.epochs, t.name, exp.data) for t in tickets])
