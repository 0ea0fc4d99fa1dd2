"""Masked training: the train state, the jit-compiled steps, the epoch loop and the optimizers.

One step: gradients -> optax update -> update * mask -> apply -> params * mask. The learning rate is a
function of the global step stored in the state, so a run rewound to epoch k resumes the schedule at
epoch k with a fresh optimizer state, as OpenLTH does. The data already lives on the device; an epoch
is one `lax.scan` over its batches (no host work inside an epoch) or, on XLA's CPU backend, one jitted
step per batch dispatched from Python (see `LOOPS`). Either way the state's buffers are donated, so an
epoch holds one copy of params and optimizer state, and the numbers are the same to float tolerance.
"""

import contextvars
import dataclasses
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from lth_jax.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
# "scan": an epoch is one compiled lax.scan. "steps": one compiled step per batch, called from Python.
# "auto": steps on CPU, scan elsewhere -- XLA CPU (jaxlib 0.10) lowers the convolutions' gradients
# inside any while loop to generic loop kernels, 20-35x slower than the same step compiled alone
# (results/bench_cpu); dispatching a step costs microseconds next to a batch's work.
LOOPS = ("auto", "scan", "steps")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Where Trainer.fit / fit_many send their work when set: (trainer, states, data, end_epoch, names,
# log_every) -> (states, histories). Replicate runs set it per thread to train in lockstep.
FIT_ROUTER: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("lth_jax_fit_router", default=None)


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # global step: the learning-rate schedule reads it
  params: Any
  batch_stats: Any         # {} for models without BatchNorm
  masks: Any               # same structure as params
  opt_state: Any
  rng: jax.Array

  @property
  def variables(self):
    return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


def optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The update direction without the learning rate (the train step scales by -lr(step))."""
  name, wd = config.name, config.weight_decay
  if name not in OPTIMIZERS:
    raise UserError(f"config.optimizer.name={name!r} is not an optimizer; allowed: {', '.join(OPTIMIZERS)}")
  # SGD and Adam take PyTorch's coupled L2 (the seeds' weight_decay); adamw decouples it.
  coupled = [optax.add_decayed_weights(wd)] if wd and name != "adamw" else []
  if name == "sgd":
    core = [optax.trace(decay=config.momentum, nesterov=config.nesterov)] if config.momentum else []
  elif name == "adam":
    core = [optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)]
  else:
    core = [optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps), optax.add_decayed_weights(wd)]
  return optax.chain(*coupled, *core) if coupled or core else optax.identity()


def learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int) -> optax.Schedule:
  """lr(step): optional linear warmup, then constant, step decay at `milestones` (epochs) or cosine."""
  if config.schedule not in SCHEDULES:
    raise UserError(f"config.optimizer.schedule={config.schedule!r} is not a schedule; "
                    f"allowed: {', '.join(SCHEDULES)}")
  warmup = int(config.warmup_epochs * steps_per_epoch)
  total = epochs * steps_per_epoch
  if config.schedule == "constant":
    main = optax.constant_schedule(config.lr)
  elif config.schedule == "step":
    main = optax.piecewise_constant_schedule(
        config.lr, {int(m * steps_per_epoch) - warmup: config.gamma for m in config.milestones})
  else:
    main = optax.cosine_decay_schedule(config.lr, max(total - warmup, 1))
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), main], [warmup])


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@dataclasses.dataclass
class Trainer:
  """Compiled train and eval functions for one model, optimizer and batch size."""
  model: nn.Module
  opt_config: ml_collections.ConfigDict
  batch_size: int
  steps_per_epoch: int
  epochs: int                       # length of the schedule
  eval_batch_size: int = 1000
  augment: Callable | None = None   # (key, x) -> x, runs inside jit
  mesh: jax.sharding.Mesh | None = None   # data parallelism: batches split over its "data" axis
  regularizer: Callable | None = None     # params -> scalar added to the loss (network slimming's L1 on BN scales)
  store: Any = None                       # checkpoint.SegmentStore: resume each fit where it stopped
  eval_every: int = 1                     # epochs between validation/test evaluations (always at the end)
  loop: str = "auto"                      # one of LOOPS
  compute_dtype: str = "float32"          # "bfloat16": activations and matmuls in bf16; params, masks,
                                          # optimizer state and BatchNorm statistics stay float32

  def __post_init__(self):
    if self.loop not in LOOPS:
      raise UserError(f"config.train.loop={self.loop!r} is not a loop; allowed: {', '.join(LOOPS)}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise UserError(f"config.train.compute_dtype={self.compute_dtype!r} is not supported; "
                      f"allowed: {', '.join(COMPUTE_DTYPES)}")
    self.tx = optimizer(self.opt_config)
    self.lr = learning_rate(self.opt_config, self.steps_per_epoch, self.epochs)
    if self.loop == "auto":
      self.loop = "steps" if jax.default_backend() == "cpu" else "scan"
    # The state is donated: `fit` copies the caller's state once, so states that methods keep to
    # rewind to are never consumed.
    self._train_epoch = jax.jit(self._train_epoch_impl, donate_argnums=0)
    self._train_epoch_many = jax.jit(jax.vmap(self._train_epoch_impl, in_axes=(0, None, None)), donate_argnums=0)
    self._shuffle = jax.jit(self._shuffle_impl, donate_argnums=0)
    self._shuffle_many = jax.jit(jax.vmap(self._shuffle_impl, in_axes=(0, None)), donate_argnums=0)
    self._train_batch = jax.jit(self._train_batch_impl, donate_argnums=0)
    self._train_batch_many = jax.jit(jax.vmap(self._train_batch_impl, in_axes=(0, None, None, 0, None)),
                                     donate_argnums=0)
    self._evaluate = jax.jit(self._evaluate_impl)
    self._evaluate_many = jax.jit(jax.vmap(self._evaluate_impl, in_axes=(0, None, None)))
    self._logits = jax.jit(self._logits_impl)

  def init_state(self, params, batch_stats, masks, key, start_epoch: int = 0) -> TrainState:
    """A fresh optimizer state; params are masked so the state starts consistent."""
    params = jax.tree.map(lambda p, m: p * m, params, masks)
    return TrainState(step=jnp.asarray(start_epoch * self.steps_per_epoch, jnp.int32), params=params,
                      batch_stats=batch_stats, masks=masks, opt_state=self.tx.init(params), rng=key)

  # -- compiled pieces ----------------------------------------------------------------------------

  def _split_batch(self, a):
    """Shard a batch over the mesh; XLA then runs the step data-parallel (params stay replicated)."""
    if self.mesh is None:
      return a
    return jax.lax.with_sharding_constraint(a, NamedSharding(self.mesh, PartitionSpec("data")))

  def _apply(self, variables, x, train: bool):
    """model.apply in the compute dtype: params and inputs cast down, logits back to float32.

    Gradients flow through the casts to the float32 params; BatchNorm statistics are left float32
    (Flax computes them in float32 and their running averages stay there).
    """
    dtype = COMPUTE_DTYPES[self.compute_dtype]
    if dtype != jnp.float32:
      variables = {**variables, "params": jax.tree.map(lambda p: p.astype(dtype), variables["params"])}
      x = x.astype(dtype)
    if train and "batch_stats" in variables:
      logits, updates = self.model.apply(variables, x, train=True, mutable=["batch_stats"])
      return logits.astype(jnp.float32), updates["batch_stats"]
    return self.model.apply(variables, x, train=train).astype(jnp.float32), variables.get("batch_stats", {})

  def _train_step(self, state: TrainState, batch):
    x, y = batch
    rng, step_key = jax.random.split(state.rng)
    if self.augment is not None:
      x = self.augment(step_key, x)

    def loss_fn(params):
      variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
      logits, new_stats = self._apply(variables, x, train=True)
      loss = cross_entropy(logits, y).mean()
      penalty = self.regularizer(params) if self.regularizer is not None else 0.0
      return loss + penalty, (loss, logits, new_stats)

    (_, (loss, logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.tree.map(jnp.multiply, grads, state.masks)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    lr = self.lr(state.step)
    params = jax.tree.map(lambda p, u, m: (p - lr * u * m) * m, state.params, updates, state.masks)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state, rng=rng)
    return new_state, {"loss": loss, "accuracy": accuracy, "lr": lr}

  def _shuffle_impl(self, state: TrainState, x):
    """The epoch's batches as rows of example indices (the last partial batch dropped)."""
    rng, perm_key = jax.random.split(state.rng)
    order = jax.random.permutation(perm_key, x.shape[0])[: self.steps_per_epoch * self.batch_size]
    return state.replace(rng=rng), order.reshape(self.steps_per_epoch, self.batch_size)

  def _train_batch_impl(self, state: TrainState, x, y, order, i):
    idx = order[i]
    return self._train_step(state, (self._split_batch(x[idx]), self._split_batch(y[idx])))

  def _train_epoch_impl(self, state: TrainState, x, y):
    state, order = self._shuffle_impl(state, x)
    state, metrics = jax.lax.scan(lambda s, i: self._train_batch_impl(s, x, y, order, i), state,
                                  jnp.arange(self.steps_per_epoch))
    return state, jax.tree.map(lambda m: jnp.mean(m, 0), metrics)

  def _train_epoch_steps(self, state: TrainState, x, y, batched: bool):
    """The scan's epoch with the loop in Python: the same shuffle and steps, one dispatch per batch."""
    state, order = (self._shuffle_many if batched else self._shuffle)(state, x)
    step, metrics = self._train_batch_many if batched else self._train_batch, []
    for i in range(self.steps_per_epoch):
      state, m = step(state, x, y, order, i)
      metrics.append(m)
    return state, jax.tree.map(lambda *m: jnp.mean(jnp.stack(m), 0), *metrics)

  def train_epoch(self, state: TrainState, x, y, batched: bool = False):
    """One epoch on (x, y); `batched`: `state` stacks several tickets along a leading axis. Consumes `state`."""
    if self.loop == "steps":
      return self._train_epoch_steps(state, x, y, batched)
    return (self._train_epoch_many if batched else self._train_epoch)(state, x, y)

  def _logits_impl(self, variables, x):
    """Logits of `x` in eval mode, computed in fixed-size batches (the last one padded)."""
    shards = self.mesh.size if self.mesh is not None else 1
    n, size = x.shape[0], min(self.eval_batch_size, -(-x.shape[0] // shards) * shards)
    batches = -(-n // size)
    padded = jnp.concatenate([x, jnp.zeros((batches * size - n, *x.shape[1:]), x.dtype)])
    logits = jax.lax.map(lambda b: self._apply(variables, self._split_batch(b), train=False)[0],
                         padded.reshape(batches, size, *x.shape[1:]))
    return logits.reshape(batches * size, -1)[:n]

  def _evaluate_impl(self, variables, x, y):
    logits = self._logits_impl(variables, x)
    return {"loss": cross_entropy(logits, y).mean(), "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

  # -- host-side API ------------------------------------------------------------------------------

  def logits(self, state: TrainState, x) -> jax.Array:
    return self._logits(state.variables, x)

  def evaluate(self, state: TrainState, split) -> dict:
    return {k: float(v) for k, v in self._evaluate(state.variables, *split).items()}

  def fit(self, state: TrainState, data, end_epoch: int, name: str = "", log_every: int = 0):
    """Train until the global epoch `end_epoch`; returns the state and one history row per epoch.

    Each row: epoch (1-based, global), train loss/accuracy (means over the epoch), validation and
    test loss/accuracy after the epoch (every `self.eval_every` epochs and at the end; None between),
    learning rate of its last step.
    """
    states, histories = self._route([state], data, end_epoch, [name], log_every)
    return states[0], histories[0]

  def fit_many(self, states: list, data, end_epoch: int, names: list, log_every: int = 0):
    """`fit` for several tickets at once: one compiled step vmapped over a leading axis.

    The states (different masks, weights, keys) must start at the same epoch. Each member's
    numbers equal those of `fit` to float tolerance; its checkpoints are its own segment's.
    """
    return self._route(states, data, end_epoch, names, log_every)

  def _route(self, states: list, data, end_epoch: int, names: list, log_every: int):
    """Train here, or hand the request to the router set in FIT_ROUTER (lth_jax.replicates)."""
    router = FIT_ROUTER.get()
    if router is not None:
      return router(self, states, data, end_epoch, names, log_every)
    return self.train_states(states, data, end_epoch, names, log_every)

  def train_states(self, states: list, data, end_epoch: int, names: list, log_every: int = 0):
    """What fit_many does, always here (no router): several states are vmapped, one is trained alone."""
    batched = len(states) > 1
    start_epoch = int(states[0].step) // self.steps_per_epoch
    if any(int(s.step) // self.steps_per_epoch != start_epoch for s in states):
      raise ValueError("fit_many needs states that start at the same epoch")
    segments = [f"{name}/{start_epoch}-{end_epoch}" for name in names]
    histories, start = [[] for _ in states], time.time()
    if self.store is not None and end_epoch > start_epoch:
      states, histories = self._restore_together(segments, states, histories, end_epoch)
      if histories[0] and log_every:
        logging.info("%s: resumed at epoch %d from checkpoints", ", ".join(names), start_epoch + len(histories[0]))
    current = _stack(states) if batched else jax.tree.map(lambda a: a.copy(), states[0])   # donated below
    evaluate = self._evaluate_many if batched else self._evaluate
    for epoch in range(start_epoch + len(histories[0]) + 1, end_epoch + 1):
      current, metrics = self.train_epoch(current, *data["train"], batched=batched)
      figures = {"train": metrics}
      if epoch % self.eval_every == 0 or epoch == end_epoch:   # every member at once, on the device
        figures.update({split: evaluate(current.variables, *data[split]) for split in ("val", "test")})
      figures = jax.device_get(figures)   # the epoch's one transfer to the host
      members = _unstack(current, len(states)) if batched else [current]
      for i, (member, name, history) in enumerate(zip(members, names, histories)):
        train_metrics, val, test = (
            {k: float(v[i] if batched else v) for k, v in figures[split].items()} if split in figures
            else {"loss": None, "accuracy": None} for split in ("train", "val", "test"))
        history.append({"epoch": epoch, "train_loss": train_metrics["loss"],
                        "train_accuracy": train_metrics["accuracy"], "val_loss": val["loss"],
                        "val_accuracy": val["accuracy"], "test_loss": test["loss"],
                        "test_accuracy": test["accuracy"], "lr": train_metrics["lr"]})
        if log_every and (epoch % log_every == 0 or epoch == end_epoch):
          logging.info("%s epoch %d/%d  train loss %.4f  val acc %s  test acc %s  (%.1fs)", name, epoch,
                       end_epoch, history[-1]["train_loss"], _fmt(val["accuracy"]), _fmt(test["accuracy"]),
                       time.time() - start)
        if not np.isfinite(history[-1]["train_loss"]):
          raise UserError(f"{name}: training loss is not finite at epoch {epoch}; lower config.optimizer.lr or "
                          "check the data (the last good checkpoint is kept)")
        if self.store is not None:
          self.store.save(segments[i], epoch, member, history, final=epoch == end_epoch)
    return (_unstack(current, len(states)) if batched else [current]), histories

  def _restore_together(self, segments, states, histories, end_epoch):
    """Every member from its newest checkpoint at one common epoch, or all from the start."""
    target = end_epoch
    while True:
      restored = [self.store.restore(seg, s, target) for seg, s in zip(segments, states)]
      if any(r is None for r in restored):
        return states, histories
      done = [len(history) for _, history in restored]
      if min(done) == max(done):
        return [state for state, _ in restored], [history for _, history in restored]
      target = int(states[0].step) // self.steps_per_epoch + min(done)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
  if batch_size < 1 or batch_size > n_train:
    raise UserError(f"config.train.batch_size={batch_size} must be in [1, {n_train}] (the training set size)")
  return n_train // batch_size  # the last partial batch is dropped; the next epoch reshuffles


def _fmt(value) -> str:
  return "–" if value is None else f"{value:.4f}"


def _stack(states: list):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def _unstack(stacked, n: int) -> list:
  return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)]
