"""The train state and what shapes an update: the optimizers and learning-rate schedules.

An optimizer is a plain optax transformation, learning rate included (the config's: `config_optimizer`;
or a user's own, `optax.adamw(schedule)`). Its schedules read the global step stored in the state
(`at_step`), so a run rewound to iteration k resumes the schedule at k with a fresh optimizer state
(fresh momentum, Adam's count at 0), as OpenLTH does.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from lth_jax.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


@flax.struct.dataclass
class TrainState:
  """Everything that changes while training one network, a pytree that jit, vmap and Orbax take as it is."""
  step: jax.Array          # global step: the learning-rate schedule reads it
  params: Any
  batch_stats: Any         # {} for models without BatchNorm
  masks: Any               # same structure as params
  opt_state: Any
  rng: jax.Array

  @property
  def variables(self):
    """The Flax variables to `apply` the model with: params, and batch_stats when the model has them."""
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


def config_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int,
                     total_steps: int | None = None) -> optax.GradientTransformation:
  """The optimizer config.optimizer names, as one optax transformation: `optimizer`'s direction scaled by
  -`learning_rate`(step), as optax.sgd / adam / adamw build theirs.

  Args:
    config: config.optimizer.
    steps_per_epoch: iterations per epoch (milestones and warmup are in epochs).
    epochs: the schedule's length in epochs.
    total_steps: the cosine's length in iterations (config.train.steps), or None: `epochs` epochs.

  Returns:
    The transformation: its updates are added to the params.
  """
  lr = learning_rate(config, steps_per_epoch, epochs, total_steps)
  return optax.chain(optimizer(config), optax.scale_by_learning_rate(lr))


# The states whose `count` is the step a schedule is read at: optax.scale_by_schedule's (under
# scale_by_learning_rate and every optax optimizer given a schedule) and inject_hyperparams'.
_SCHEDULE_STATES = (optax.ScaleByScheduleState, optax.InjectStatefulHyperparamsState)


def at_step(opt_state: optax.OptState, step: jax.Array) -> optax.OptState:
  """`opt_state` with its schedules at the global `step`: each schedule's count set to it.

  A fresh optimizer state (a rewind to iteration k) then reads its schedule at k, not 0, and an iteration
  that skips the optimizer (RigL's mask updates) still advances it, as `lr(state.step)` would. Other counts
  (Adam's bias correction) are the optimizer's own and stay as they are.

  Args:
    opt_state: any optax transformation's state.
    step: the global iteration (TrainState.step).

  Returns:
    The same state with the counts of its schedules equal to `step`.
  """
  def visit(node):
    if not isinstance(node, _SCHEDULE_STATES):
      return node
    node = node._replace(count=jnp.asarray(step, node.count.dtype))
    return node._replace(inner_state=at_step(node.inner_state, step)) if hasattr(node, "inner_state") else node
  return jax.tree.map(visit, opt_state, is_leaf=lambda x: isinstance(x, _SCHEDULE_STATES))


def learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int,
                  total_steps: int | None = None) -> optax.Schedule:
  """lr(step): optional linear warmup, then constant, step decay at `milestones` (epochs) or cosine.

  The cosine decays over `total_steps` (config.train.steps), or `epochs` whole epochs when None.
  """
  if config.schedule not in SCHEDULES:
    raise UserError(f"config.optimizer.schedule={config.schedule!r} is not a schedule; "
                    f"allowed: {', '.join(SCHEDULES)}")
  warmup = int(config.warmup_epochs * steps_per_epoch)
  total = epochs * steps_per_epoch if total_steps is None else total_steps
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


def steps_per_epoch(n_train: int, batch_size: int) -> int:
  """Full batches per epoch, the last partial one dropped; a UserError when `batch_size` is not in [1, n_train]."""
  if batch_size < 1 or batch_size > n_train:
    raise UserError(f"config.train.batch_size={batch_size} must be in [1, {n_train}] (the training set size)")
  return n_train // batch_size  # the last partial batch is dropped; the next epoch reshuffles
