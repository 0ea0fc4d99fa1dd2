"""Masked training inside a user's own optax/Flax loop: `keep_pruned` keeps pruned weights exactly 0.

    tx = keep_pruned(optax.sgd(0.1, momentum=0.9), m)
    state = TrainState.create(apply_fn=model.apply, params=masks.apply(params, m), tx=tx)
    state = state.apply_gradients(grads=grads)      # pruned weights stay exactly 0.0

Conventions:
  * `masks` is a mask pytree as in `lth_jax.sparsity.masks`: same structure and shapes as the params;
    a position is pruned where its mask is 0 (float or bool masks both work).
  * The masks live in the optimizer state (`MaskedState.masks`), not in the transformation: `update`
    reads them from there, so they can be swapped between rounds with `with_masks` without building a
    new transformation (a jitted step keeps its compiled code). The masks given to `keep_pruned` are
    only the ones `init` puts in.
  * The inner optimizer never sees a pruned weight: its gradients, and the params it is given (for
    weight decay), are zero at pruned positions, so its momentum or Adam moments stay zero there.
  * At pruned positions the update is exactly `-params`, so `optax.apply_updates` (params + updates)
    gives exactly 0.0 even for params that were not zero; that is why `update` needs `params`.
  * The wrapper must be the outermost transformation: anything applied after it (a chain, MultiSteps)
    would change the updates it zeroed. `masks_of` and `with_masks` look for its state at the top
    level only.
  * Flax NNX: the params may be a model's state, `nnx.state(model, nnx.Param)`, and the masks built from
    it (`masks.init`, `pruning.magnitude`). nnx.Optimizer initialises with that state, whose leaves are
    Variables, and updates with plain arrays (`nnx.as_pure`); so the wrapper works on plain arrays
    throughout and keeps the masks as plain arrays in its state. The updates it returns have the form of
    the gradients it was given. With nnx.Optimizer (`wrt=nnx.Param`):

        optimizer = nnx.Optimizer(model, keep_pruned(optax.sgd(0.1), m), wrt=nnx.Param)
        optimizer.update(model, grads)              # pruned weights stay exactly 0.0
        nnx.update(optimizer.opt_state, nnx.state(with_masks(optimizer.opt_state, m2, params, optimizer.tx)))
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lth_jax.sparsity import masks as masks_lib


class MaskedState(NamedTuple):
  """The state of `keep_pruned`: the inner optimizer's state and the masks in force."""
  inner_state: optax.OptState
  masks: Any


def _arrays(tree):
  """`tree` with each NNX Variable replaced by the array it holds (`nnx.as_pure`); a tree without
  Variables (a linen params dict, a plain mask pytree) is returned as it is, the same object."""
  is_variable = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
  return nnx.as_pure(tree) if any(map(is_variable, jax.tree.leaves(tree, is_leaf=is_variable))) else tree


def _check_shapes(masks, params) -> None:
  if jax.tree.structure(masks) != jax.tree.structure(params):
    raise ValueError("keep_pruned: the masks do not have the structure of the params: "
                     f"{jax.tree.structure(masks)} vs {jax.tree.structure(params)}")
  for (name, m), p in zip(masks_lib.named_leaves(masks), jax.tree.leaves(params)):
    if jnp.shape(m) != jnp.shape(p):
      raise ValueError(f"keep_pruned: mask {name!r} has shape {jnp.shape(m)}, its param {jnp.shape(p)}")


def keep_pruned(inner: optax.GradientTransformation, masks: masks_lib.PyTree) -> optax.GradientTransformation:
  """Wraps `inner` so that the weights `masks` prunes stay exactly 0.0 after every update.

  Args:
    inner: any optax transformation (SGD, Adam, a chain with weight decay).
    masks: the masks `init` puts in the state, shaped like the params.

  Returns:
    The wrapping transformation; its state is a `MaskedState` and its `update` needs the params.
  """

  def init_fn(params):
    m, params = _arrays(masks), _arrays(params)
    _check_shapes(m, params)
    return MaskedState(inner.init(masks_lib.zero_pruned(params, m)), m)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("keep_pruned needs the params in update(grads, state, params): it returns "
                       "-params at pruned positions so that apply_updates sets them to exactly 0")
    m, grads, params_ = _arrays(state.masks), _arrays(updates), _arrays(params)
    inner_updates, inner_state = inner.update(masks_lib.zero_pruned(grads, m), state.inner_state,
                                              masks_lib.zero_pruned(params_, m))
    # p + (-p) is exactly 0.0 in floating point, whatever p was.
    masked = jax.tree.map(lambda u, p, mask: jnp.where(mask != 0, u, -p), inner_updates, params_, m)
    # in the form of the gradients given (NNX Variables or not): the leaves are the same, in the same order
    return jax.tree.unflatten(jax.tree.structure(updates), jax.tree.leaves(masked)), MaskedState(inner_state, m)

  return optax.GradientTransformation(init_fn, update_fn)


def _masked_state(opt_state) -> MaskedState:
  if not isinstance(opt_state, MaskedState):
    raise ValueError(f"expected the state of keep_pruned (a MaskedState) at the top level, got "
                     f"{type(opt_state).__name__}: keep_pruned must be the outermost transformation")
  return opt_state


def masks_of(opt_state: MaskedState) -> masks_lib.PyTree:
  """The masks held in the state of `keep_pruned`.

  Args:
    opt_state: the state of `keep_pruned` (the outermost transformation).

  Returns:
    Its masks.
  """
  return _masked_state(opt_state).masks


def with_masks(opt_state: MaskedState, new_masks: masks_lib.PyTree, params: masks_lib.PyTree | None = None,
               tx: optax.GradientTransformation | None = None, reset: bool = True) -> MaskedState:
  """`opt_state` holding `new_masks` instead of its masks.

  Args:
    opt_state: the state of `keep_pruned`.
    new_masks: masks of the same structure as the old ones.
    params: the params the inner state is re-initialised from (reset=True only).
    tx: the `keep_pruned` transformation (a TrainState's `state.tx`) or its inner one (reset=True only).
    reset: True re-initialises the inner state from `params` (fresh momentum and step count, as after
      a lottery-ticket rewind). False keeps the inner state as it is; its moments may be nonzero at
      newly pruned positions, which is harmless: they are masked out before they reach a weight.

  Returns:
    The new state.
  """
  old, new_masks = _masked_state(opt_state), _arrays(new_masks)
  if jax.tree.structure(new_masks) != jax.tree.structure(_arrays(old.masks)):
    raise ValueError("with_masks: the new masks do not have the structure of the old ones: "
                     f"{jax.tree.structure(new_masks)} vs {jax.tree.structure(_arrays(old.masks))}")
  if not reset:
    return MaskedState(old.inner_state, new_masks)
  if params is None or tx is None:
    raise ValueError("with_masks(reset=True) re-initialises the inner optimizer: pass params= and "
                     "tx= (the keep_pruned transformation or its inner one)")
  fresh = tx.init(masks_lib.zero_pruned(_arrays(params), new_masks))
  # tx is either the wrapper (its init returns a MaskedState) or the inner transformation itself.
  inner_state = fresh.inner_state if isinstance(fresh, MaskedState) else fresh
  return MaskedState(inner_state, new_masks)
