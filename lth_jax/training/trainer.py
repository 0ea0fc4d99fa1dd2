"""Masked training of a list of states: the epoch loop, evaluation, checkpoints and resuming.

`Trainer.fit` is the one way to train. It takes a list of states that start at the same epoch: one
state trains alone; several (different masks, weights, keys) train as one program, vmapped over a
leading axis, with each member's numbers equal to training it alone to float tolerance. Which states
train together is decided above it (`lth_jax.methods.cohort`).

The data lives on the device; an epoch is one `lax.scan` over its batches or, on XLA's CPU
backend, one jitted step per batch dispatched from Python (see `LOOPS`). A streamed split
(lth_jax.data.stream.Split, data.pipeline=stream) stays on the host instead: `streamed.Feeder` feeds the
same batches to the same step one by one. Either way the state's
buffers are donated, so an epoch holds one copy of params and optimizer state.
"""

import dataclasses
import functools
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from lth_jax.errors import UserError
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity.optax import keep_pruned
from lth_jax.training import step, streamed
from lth_jax.training.state import TrainState, config_optimizer, learning_rate

# "scan": an epoch is one compiled lax.scan. "steps": one compiled step per batch, called from Python.
# "auto": steps on CPU, scan elsewhere -- XLA CPU (jaxlib 0.10) lowers convolutions not in its canonical
# form inside any while loop to generic loop kernels, 20-35x slower than the same step compiled alone.
# lth_jax's models write theirs canonical (lth_jax.models.cpu_conv) and scan at parity with steps, but a
# user's own convnet would not; dispatching a step costs microseconds next to a batch's work
# (results/bench_cpu).
LOOPS = ("auto", "scan", "steps")
TICKETS = "tickets"   # the mesh axis stacked states (vmapped tickets) are split over


def _compiled(fn, in_axes, donate: bool = True, tickets_axis: str | None = None) -> tuple[Callable, Callable]:
  """(fn for one state, fn for states stacked along a leading axis), each jitted once.

  With `tickets_axis` (a mesh axis name) the stacked axis is split over that axis of the mesh: the
  sharding constraints inside `fn` (batches over "data") gain it for the stacked dimension.
  """
  donate_argnums = 0 if donate else ()
  stacked = jax.vmap(fn, in_axes=in_axes, spmd_axis_name=tickets_axis)
  return jax.jit(fn, donate_argnums=donate_argnums), jax.jit(stacked, donate_argnums=donate_argnums)


@dataclasses.dataclass
class Trainer:
  """Compiled train and eval functions for one model, optimizer and batch size.

  `optimizer` is config.optimizer (the command line's, built by `state.config_optimizer`) or any optax
  transformation with its learning rate, e.g. optax.chain(optax.clip_by_global_norm(1.0),
  optax.adamw(optax.warmup_cosine_decay_schedule(...))). Either way the step wraps it in `keep_pruned`
  with each state's masks, and its schedules read the global step (`state.at_step`).
  """
  model: nn.Module
  optimizer: ml_collections.ConfigDict | optax.GradientTransformation
  batch_size: int
  steps_per_epoch: int
  epochs: int                       # length of the schedule
  eval_batch_size: int = 1000
  augment: Callable | None = None   # (key, x) -> x, runs inside jit
  mesh: jax.sharding.Mesh | None = None   # batches split over its "data" axis; stacked states over "tickets"
  regularizer: Callable | None = None     # params -> scalar added to the loss (network slimming's L1 on BN scales)
  store: Any = None                       # checkpoint.SegmentStore: resume each fit where it stopped
  eval_every: int = 1                     # epochs between validation/test evaluations (always at the end)
  eval_every_steps: int = 0               # >0: evaluate every this many iterations instead (see `fit`)
  test_at_best_only: bool = False         # with eval_every_steps: the test split only where validation improves
  best_by: str = "val_accuracy"           # what "improves" means: a higher val_accuracy or a lower val_loss
  last_step: int | None = None            # the schedule ends at this global iteration (config.train.steps):
                                          # the epoch that holds it stops there
  loop: str = "auto"                      # one of LOOPS
  compute_dtype: str = "float32"          # "bfloat16": activations and matmuls in bf16; params, masks,
                                          # optimizer state and BatchNorm statistics stay float32
  which: Any = None                       # prunable leaves for the history's sparsity (None: masks.prunable's)
  mask_update: Callable | None = None     # step.Recipe.mask_update: mask changes inside the compiled step
  normalize: Callable | None = None       # step.Recipe.normalize: uint8 pixels -> model inputs, inside jit
  cpu_conv: str | None = None             # step.Recipe.cpu_conv: the convolution lowering its steps trace with
  lr: optax.Schedule | None = None        # an optax `optimizer`'s learning rate, for the history's "lr" only
                                          # (None: recorded as None); a config's is built from it

  def __post_init__(self):
    if self.loop not in LOOPS:
      raise UserError(f"config.train.loop={self.loop!r} is not a loop; allowed: {', '.join(LOOPS)}")
    if self.compute_dtype not in step.COMPUTE_DTYPES:
      raise UserError(f"config.train.compute_dtype={self.compute_dtype!r} is not supported; "
                      f"allowed: {', '.join(step.COMPUTE_DTYPES)}")
    if isinstance(self.optimizer, optax.GradientTransformation):
      self.tx = self.optimizer
    else:
      self.tx = config_optimizer(self.optimizer, self.steps_per_epoch, self.epochs, self.last_step)
      self.lr = learning_rate(self.optimizer, self.steps_per_epoch, self.epochs, self.last_step)
    if self.loop == "auto":
      self.loop = "steps" if jax.default_backend() == "cpu" else "scan"
    self.recipe = recipe = step.Recipe(self.model, self.tx, self.lr, self.batch_size, self.steps_per_epoch, self.eval_batch_size,
                                       self.augment, self.regularizer, self.mesh, self.compute_dtype,
                                       self.mask_update, self.normalize, self.cpu_conv)
    # The state is donated: `fit` copies the caller's states once, so states that methods keep to
    # rewind to are never consumed. Index [batched]: [0] one state, [1] states stacked.
    compiled = functools.partial(_compiled, tickets_axis=TICKETS if TICKETS in self._axes else None)
    self._epoch = compiled(functools.partial(step.epoch, recipe), (0, None, None))
    self._shuffle = compiled(functools.partial(step.shuffle, recipe), (0, None))
    self._batch_step = compiled(functools.partial(step.batch_step, recipe), (0, None, None, 0, None))
    self._evaluate = compiled(functools.partial(step.evaluate, recipe), (0, None, None), donate=False)
    # Logits come back whole on every process: their batches are split over the mesh, and a process can
    # read only what its own devices hold.
    whole = None if self.mesh is None else jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self._logits = jax.jit(functools.partial(step.logits, recipe), out_shardings=whole)
    self._feeder = streamed.Feeder(recipe, compiled)   # splits streamed from the host (data.pipeline=stream)

  @property
  def _axes(self) -> tuple:
    return () if self.mesh is None else self.mesh.axis_names

  def _stack(self, states: list):
    """The states stacked along a leading axis (one vmapped program), split over the mesh's "tickets" axis
    when it has one and their number is a multiple of it (otherwise every tickets slice holds them all)."""
    stacked = _stack(states)
    if TICKETS not in self._axes or len(states) % self.mesh.shape[TICKETS]:
      return stacked
    return jax.device_put(stacked, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(TICKETS)))

  def init_state(self, params, batch_stats, masks, key, start_epoch: int = 0) -> TrainState:
    """A fresh optimizer state (keep_pruned's inner one: the state keeps the masks); params are masked so
    the state starts consistent."""
    params = masks_lib.zero_pruned(params, masks)
    opt_state = keep_pruned(self.tx, masks).init(params).inner_state
    return TrainState(step=jnp.asarray(start_epoch * self.steps_per_epoch, jnp.int32), params=params,
                      batch_stats=batch_stats, masks=masks, opt_state=opt_state, rng=key)

  def train_epoch(self, state: TrainState, x, y=None, batched: bool = False, first: int = 0, last: int | None = None,
                  after_step: Callable | None = None):
    """One epoch on (x, y), or on a streamed split x (a streamed.HostSplit; y None); `batched`: `state` stacks
    several tickets along a leading axis. Consumes `state`.

    Steps `first` .. `last`-1 of the epoch only, when given: a state rewound to an iteration inside an
    epoch finishes it, and the dense run's first steps of an epoch give that iteration's weights.
    `after_step(state, i)`, when given, is called after step i-1 of the epoch (i steps of it done), before
    the next step consumes the state: mid-epoch evaluations (the steps are then dispatched one by one).
    """
    last = self.steps_per_epoch if last is None else last
    if isinstance(x, streamed.HostSplit):   # the same order and steps, batches gathered on the host
      return self._feeder.epoch(state, x, batched, first, last, after_step)
    if self.loop == "scan" and (first, last) == (0, self.steps_per_epoch) and after_step is None:
      return self._epoch[batched](state, x, y)
    state, order = self._shuffle[batched](state, x)   # the scan's epoch, one dispatch per batch
    metrics = []
    for i in range(first, last):
      state, m = self._batch_step[batched](state, x, y, order, i)
      metrics.append(m)
      if after_step is not None:
        after_step(state, i + 1)
    return state, jax.tree.map(lambda *m: jnp.mean(jnp.stack(m), 0), *metrics)

  def advance(self, state: TrainState, data, steps: int) -> TrainState:
    """The first `steps` steps of the next epoch of a state at an epoch boundary (`state` is kept): its
    weights after exactly that many more iterations, as training through the epoch would have them."""
    if int(state.step) % self.steps_per_epoch:
      raise ValueError("Trainer.advance needs a state at an epoch boundary")
    copy = jax.tree.map(lambda a: a.copy(), state)   # the compiled steps donate their input
    return self.train_epoch(copy, *_fed(data["train"]), last=steps)[0]

  def logits(self, state: TrainState, x) -> jax.Array:
    """The model's logits on `x` in eval mode, compiled once; host inputs (numpy, or a streamed split whole)
    go batch by batch."""
    if isinstance(x, (np.ndarray, streamed.HostSplit)):
      return self._feeder.logits(self._logits, state.variables, x)
    return self._logits(state.variables, x)

  def evaluate(self, state: TrainState, split) -> dict:
    """{"loss", "accuracy"} on `split` = (x, y) or a streamed.HostSplit, as floats."""
    return {k: float(v) for k, v in self._evaluate_split(state.variables, split, False).items()}

  def _evaluate_split(self, variables, split, batched: bool) -> dict:
    if isinstance(split, streamed.HostSplit):
      return self._feeder.evaluate(variables, split, batched)
    return self._evaluate[batched](variables, *split)

  def fit(self, states: list, data, end_epoch: int, names: list, log_every: int = 0, progress=None):
    """Train every state until the global epoch `end_epoch`: (states, one history per state).

    The states must start at the same epoch; several train as one vmapped program. names[i] names
    state i's segment for checkpoints and logs. Each history row: epoch (1-based, global), train
    loss/accuracy (means over the epoch), validation and test loss/accuracy after the epoch (every
    `self.eval_every` epochs and at the end; None between), learning rate of its last step, sparsity
    of the prunable weights at the end of the epoch. `progress` (a progress.Progress, the
    experiment's bar) advances by one per state and epoch, epochs restored from checkpoints included.

    With `eval_every_steps` = k > 0, validation and test are evaluated after every global iteration that
    is a multiple of k and after the fit's last one instead; each row lists its epoch's evaluations under
    "evals" ({step, val_loss, val_accuracy, test_loss, test_accuracy}) and carries the one at the epoch's
    last step as its own val/test figures (None when there was none); with `test_at_best_only`, test
    figures are None at evaluations where validation did not improve. With `last_step`, the epoch holding
    it is the fit's last and stops there.
    """
    batched = len(states) > 1
    start_step = int(states[0].step)
    start_epoch = start_step // self.steps_per_epoch
    if any(int(s.step) != start_step for s in states):
      raise ValueError("Trainer.fit needs states that start at the same step")
    segments = [f"{name}/{start_epoch}-{end_epoch}" for name in names]
    histories, start = [[] for _ in states], time.time()
    seconds = [0.0] * len(states)   # each member's training seconds in this segment: its share of a vmapped epoch
    if self.store is not None and end_epoch > start_epoch:
      states, histories, seconds = self._restore_together(segments, states, histories, end_epoch)
      self.store.credit(sum(seconds))
      if histories[0] and log_every:
        logging.info("%s: resumed at epoch %d from checkpoints", ", ".join(names), start_epoch + len(histories[0]))
    sparsities = [masks_lib.sparsity(s.masks, self.which) for s in states]   # read again per epoch where
    # a mask_update changes the masks inside the step (gradual, SET, RigL); without one they stay
    current = self._stack(states) if batched else jax.tree.map(lambda a: a.copy(), states[0])   # donated below
    first_epoch = start_epoch + len(histories[0]) + 1
    if progress is not None and histories[0]:
      progress.advance(len(states) * len(histories[0]), _describe(names))
    spe = self.steps_per_epoch
    best = [None] * len(states)   # the best validation figure so far in this fit, per member (test_at_best_only)
    end_step = end_epoch * spe if self.last_step is None else min(end_epoch * spe, self.last_step)
    last_epoch = -(-end_step // spe)
    tick = time.time()
    for epoch in range(first_epoch, last_epoch + 1):
      # a state rewound inside an epoch (prune.rewind_step) first finishes that epoch's remaining steps;
      # the epoch holding the schedule's last step (train.steps) stops there
      first = start_step % spe if epoch == start_epoch + 1 else 0
      last = min(spe, end_step - (epoch - 1) * spe)
      evals = []   # (global step, {split: metrics}) of the evaluations every `eval_every_steps` iterations

      def after_step(state, i, epoch=epoch, evals=evals):
        at = (epoch - 1) * spe + i
        if at % self.eval_every_steps == 0 or at == end_step:
          evals.append((at, self._evaluate_at_step(state, data, batched, best, at == end_step)))
      current, metrics = self.train_epoch(current, *_fed(data["train"]), batched=batched, first=first, last=last,
                                          after_step=after_step if self.eval_every_steps else None)
      figures = {"train": metrics}
      if self.eval_every_steps:   # the row's val/test: an evaluation at the epoch's last step, if there was one
        if evals and evals[-1][0] == (epoch - 1) * spe + last:
          figures.update(evals[-1][1])
      elif epoch % self.eval_every == 0 or epoch == last_epoch:   # every member at once, on the device
        figures.update(self._evaluate_splits(current, data, batched))
      figures, evals = jax.device_get((figures, evals))   # the epoch's one transfer to the host
      share, tick = (time.time() - tick) / len(states), time.time()   # (the last epoch's saves go uncounted)
      members = _unstack(current, len(states)) if batched else [current]
      for i, (member, name, history) in enumerate(zip(members, names, histories)):
        if self.mask_update is not None:
          sparsities[i] = masks_lib.sparsity(member.masks, self.which)
        train_metrics, val, test = (_member(figures.get(split), i, batched) for split in ("train", "val", "test"))
        history.append({"epoch": epoch, "train_loss": train_metrics["loss"],
                        "train_accuracy": train_metrics["accuracy"], "val_loss": val["loss"],
                        "val_accuracy": val["accuracy"], "test_loss": test["loss"],
                        "test_accuracy": test["accuracy"], "lr": _known(train_metrics["lr"]),
                        "sparsity": sparsities[i]})
        if self.eval_every_steps:
          history[-1]["evals"] = [{"step": at, **{f"{split}_{k}": v for split in ("val", "test")
                                                  for k, v in _member(e.get(split), i, batched).items()}}
                                  for at, e in evals]
        if log_every and (epoch % log_every == 0 or epoch == last_epoch):
          logging.info("%s epoch %d/%d  train loss %.4f  val acc %s  test acc %s  (%.1fs)", name, epoch,
                       end_epoch, history[-1]["train_loss"], _fmt(val["accuracy"]), _fmt(test["accuracy"]),
                       time.time() - start)
        if not np.isfinite(history[-1]["train_loss"]):
          raise UserError(f"{name}: training loss is not finite at epoch {epoch}; lower config.optimizer.lr or "
                          "check the data (the last good checkpoint is kept)")
        seconds[i] += share
        if self.store is not None:
          self.store.save(segments[i], epoch, member, history, final=epoch == last_epoch, seconds=seconds[i])
      if progress is not None:
        progress.advance(len(states), _describe(names))
    return (_unstack(current, len(states)) if batched else [current]), histories

  def _evaluate_splits(self, state, data, batched: bool) -> dict:
    """Validation and test loss / accuracy of `state` (every member at once), left on the device; a split
    without examples (no val split: data.val_fraction=0) is left out, so its figures stay None."""
    return {split: self._evaluate_split(state.variables, data[split], batched) for split in ("val", "test")
            if data[split][1].shape[0]}

  def _evaluate_at_step(self, state, data, batched: bool, best: list, last: bool) -> dict:
    """A mid-epoch evaluation. With `test_at_best_only`, the test split is evaluated only when some member's
    validation figure beats `best` (updated here) or at the fit's `last` step: every evaluation the run's
    best one (lth_jax.evaluation.best_evaluation) can be has its test figures, at a third of the cost."""
    if not self.test_at_best_only or not data["val"][1].shape[0]:
      return self._evaluate_splits(state, data, batched)
    val = self._evaluate_split(state.variables, data["val"], batched)
    figure = np.atleast_1d(np.asarray(val["accuracy" if self.best_by == "val_accuracy" else "loss"]))
    sign = 1 if self.best_by == "val_accuracy" else -1
    improved = [b is None or sign * f > sign * b for f, b in zip(figure, best)]
    best[:] = [f if up else b for f, b, up in zip(figure, best, improved)]
    if any(improved) or last:
      return {"val": val, "test": self._evaluate_split(state.variables, data["test"], batched)}
    return {"val": val}

  def _restore_together(self, segments, states, histories, end_epoch):
    """(states, histories, training seconds): every member from its newest checkpoint at one common epoch, or
    all from the start."""
    target = end_epoch
    while True:
      restored = [self.store.restore(seg, s, target) for seg, s in zip(segments, states)]
      if any(r is None for r in restored):
        return states, histories, [0.0] * len(states)
      done = [len(history) for _, history, _ in restored]
      if min(done) == max(done):
        return tuple(map(list, zip(*restored)))
      target = int(states[0].step) // self.steps_per_epoch + min(done)


def _fed(split) -> tuple:
  """train_epoch's (x, y) for a split: a streamed one goes whole, as x."""
  return (split, None) if isinstance(split, streamed.HostSplit) else split


def _member(figures: dict | None, i: int, batched: bool) -> dict:
  """Member i's figures as floats (a split not evaluated: loss and accuracy None)."""
  if figures is None:
    return {"loss": None, "accuracy": None}
  return {k: float(v[i] if batched else v) for k, v in figures.items()}


def _known(value: float) -> float | None:
  """None for a figure the step could not know (NaN: the learning rate of an optax optimizer given without `lr`)."""
  return None if np.isnan(value) else value


def _fmt(value) -> str:
  return "–" if value is None else f"{value:.4f}"


def _stack(states: list):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def _unstack(stacked, n: int) -> list:
  return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)]


def _describe(names: list) -> str:
  return names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"
