"""The train and eval steps as plain functions of (recipe, state, data); `Trainer` compiles them.

One step: gradients -> the recipe's optax transformation wrapped in `keep_pruned` with the state's masks
-> `optax.apply_updates`, so pruned weights stay exactly zero through momentum, Adam and weight decay by
the same code a user's own loop runs; then the recipe's optional `mask_update`. The state holds the inner
transformation's state (`opt_state`) and the masks (`masks`) apart: together they are keep_pruned's
`MaskedState`, rebuilt each step, so methods change the masks with `state.replace(masks=...)` and
`mask_update` hooks see the plain optimizer (its moments reset with optax.tree_map_params). The gradients
are taken at the masked params for every weight, pruned ones included (the dense gradient RigL grows by);
keep_pruned masks them before the optimizer sees them. An epoch is one shuffle and `steps_per_epoch`
steps; `epoch` runs them as one `lax.scan`, and a caller may run the same shuffle and steps one by one
(`shuffle`, `batch_step`): the numbers are the same to float tolerance.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from lth_jax.models import cpu_conv
from lth_jax.sparsity.optax import MaskedState, keep_pruned
from lth_jax.training.state import TrainState, at_step

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def cross_entropy(logits, labels):
  """Softmax cross-entropy per example, labels as class indices."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@dataclasses.dataclass(frozen=True, eq=False)
class Recipe:
  """Everything a step needs besides the state and the data."""
  model: nn.Module
  tx: optax.GradientTransformation          # the whole optimizer, learning rate included; unmasked
  lr: optax.Schedule | None                 # the learning rate the history records (None: not known)
  batch_size: int
  steps_per_epoch: int
  eval_batch_size: int = 1000
  augment: Callable | None = None          # (key, x) -> x
  regularizer: Callable | None = None      # params -> scalar added to the loss
  mesh: jax.sharding.Mesh | None = None    # batches split over its "data" axis; stacked tickets over "tickets"
  compute_dtype: str = "float32"
  # (state after the step, the step's dense gradients, tx) -> state: mask updates on the device, inside
  # the compiled step (gradual pruning, SET, RigL); it decides with lax.cond on state.step when to act.
  # One with a `replaces_step(step after) -> bool` method (RigL's) is handed, where that is true, the
  # weights and optimizer state the step started from: its update replaces the optimizer's.
  mask_update: Callable | None = None
  # uint8 pixels -> model inputs (lth_jax.data.pixels.Normalizer), applied inside the compiled steps before
  # augmentation, so crops pad with the zeros of the normalised image exactly as for float data.
  normalize: Callable | None = None
  # lth_jax.models.cpu_conv's mode ("auto", "on", "off") for the convolutions traced in these steps, so an
  # experiment's setting holds for its own programs only; None: the process default.
  cpu_conv: str | None = None


def model_inputs(recipe: Recipe, x):
  """What the model sees of `x`: uint8 pixels normalised (`recipe.normalize`), float inputs unchanged."""
  return x if recipe.normalize is None else recipe.normalize(x)


def data_shards(mesh: jax.sharding.Mesh | None) -> int:
  """How many parts a batch is split into: the size of `mesh`'s "data" axis (1 without a mesh)."""
  return 1 if mesh is None else mesh.shape["data"]


def split_batch(recipe: Recipe, a):
  """Shard a batch over the mesh; XLA then runs the step data-parallel (params stay replicated)."""
  if recipe.mesh is None:
    return a
  return jax.lax.with_sharding_constraint(a, NamedSharding(recipe.mesh, PartitionSpec("data")))


def apply_model(recipe: Recipe, variables, x, train: bool):
  """model.apply in the compute dtype: params and inputs cast down, logits back to float32.

  Gradients flow through the casts to the float32 params; BatchNorm statistics are left float32
  (Flax computes them in float32 and their running averages stay there).
  """
  x = model_inputs(recipe, x)
  dtype = COMPUTE_DTYPES[recipe.compute_dtype]
  if dtype != jnp.float32:
    variables = {**variables, "params": jax.tree.map(lambda p: p.astype(dtype), variables["params"])}
    x = x.astype(dtype)
  with cpu_conv.using(recipe.cpu_conv):   # every trace of the model goes through here
    if train and "batch_stats" in variables:
      logits, updates = recipe.model.apply(variables, x, train=True, mutable=["batch_stats"])
      return logits.astype(jnp.float32), updates["batch_stats"]
    return recipe.model.apply(variables, x, train=train).astype(jnp.float32), variables.get("batch_stats", {})


def batch_inputs(recipe: Recipe, key, x):
  """A training batch as the model sees it: pixels normalised, then augmented with `key`."""
  x = model_inputs(recipe, x)
  return x if recipe.augment is None else recipe.augment(key, x)


def train_step(recipe: Recipe, state: TrainState, batch) -> tuple[TrainState, dict]:
  """One masked optimizer step on `batch` = (x, y): (the new state, {"loss", "accuracy", "lr"}).

  Pruned weights stay exactly 0; `recipe.mask_update`, when set, then updates the masks.
  """
  x, y = batch
  rng, step_key = jax.random.split(state.rng)
  x = batch_inputs(recipe, step_key, x)

  def loss_fn(params):
    variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
    logits, new_stats = apply_model(recipe, variables, x, train=True)
    loss = cross_entropy(logits, y).mean()
    penalty = recipe.regularizer(params) if recipe.regularizer is not None else 0.0
    return loss + penalty, (loss, logits, new_stats)

  (_, (loss, logits, new_stats)), dense_grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  # keep_pruned zeroes the gradients at pruned positions (a NaN or inf there reaches neither the optimizer's
  # state nor the weight) and returns -params there, so the weight becomes exactly 0
  masked_state = MaskedState(at_step(state.opt_state, state.step), state.masks)
  updates, masked_state = keep_pruned(recipe.tx, state.masks).update(dense_grads, masked_state, state.params)
  params, opt_state = optax.apply_updates(state.params, updates), masked_state.inner_state
  lr = recipe.lr(state.step) if recipe.lr is not None else jnp.nan
  accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                            opt_state=opt_state, rng=rng)
  if recipe.mask_update is not None:
    replaces = getattr(recipe.mask_update, "replaces_step", None)
    if replaces is not None:   # an update iteration of RigL: no optimizer step, as in rigl and jaxpruner
      skip = replaces(new_state.step)
      keep = lambda before, after: jax.tree.map(lambda b, a: jnp.where(skip, b, a), before, after)  # noqa: E731
      new_state = new_state.replace(params=keep(state.params, params), opt_state=keep(state.opt_state, opt_state))
    new_state = recipe.mask_update(new_state, dense_grads, recipe.tx)
  return new_state, {"loss": loss, "accuracy": accuracy, "lr": lr}


def shuffle(recipe: Recipe, state: TrainState, x) -> tuple[TrainState, Any]:
  """The epoch's batches as rows of example indices (the last partial batch dropped)."""
  rng, perm_key = jax.random.split(state.rng)
  order = jax.random.permutation(perm_key, x.shape[0])[: recipe.steps_per_epoch * recipe.batch_size]
  return state.replace(rng=rng), order.reshape(recipe.steps_per_epoch, recipe.batch_size)


def batch_step(recipe: Recipe, state: TrainState, x, y, order, i):
  """Step i of the epoch whose batches `order` holds."""
  idx = order[i]
  return train_step(recipe, state, (split_batch(recipe, x[idx]), split_batch(recipe, y[idx])))


def epoch(recipe: Recipe, state: TrainState, x, y):
  """One shuffle and every step of an epoch as one lax.scan; metrics are the epoch's means."""
  state, order = shuffle(recipe, state, x)
  state, metrics = jax.lax.scan(lambda s, i: batch_step(recipe, s, x, y, order, i), state,
                                jnp.arange(recipe.steps_per_epoch))
  return state, jax.tree.map(lambda m: jnp.mean(m, 0), metrics)


def eval_size(recipe: Recipe, n: int) -> int:
  """The batch size a split of `n` examples is evaluated in: eval_batch_size, or the split rounded up to a
  multiple of the data shards when smaller."""
  shards = data_shards(recipe.mesh)
  return min(recipe.eval_batch_size, -(-n // shards) * shards)


def logits(recipe: Recipe, variables, x):
  """Logits of `x` in eval mode, computed in fixed-size batches (the last one padded)."""
  n, size = x.shape[0], eval_size(recipe, x.shape[0])
  batches = -(-n // size)
  padded = jnp.concatenate([x, jnp.zeros((batches * size - n, *x.shape[1:]), x.dtype)])
  out = jax.lax.map(lambda b: apply_model(recipe, variables, split_batch(recipe, b), train=False)[0],
                    padded.reshape(batches, size, *x.shape[1:]))
  return out.reshape(batches * size, -1)[:n]


def evaluate(recipe: Recipe, variables, x, y) -> dict:
  """{"loss", "accuracy"} of the model with `variables` on (x, y), in eval mode."""
  out = logits(recipe, variables, x)
  return {"loss": cross_entropy(out, y).mean(), "accuracy": jnp.mean(jnp.argmax(out, -1) == y)}
