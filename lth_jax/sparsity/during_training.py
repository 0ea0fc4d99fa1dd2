"""Masks that change during training, as pure jit-able functions of the step: the schedules of gradual
magnitude pruning (Zhu & Gupta 2017) and of drop-and-grow (SET, Mocanu et al. 2018; RigL, Evci et al.
2020), and the drop-and-grow update itself.

Conventions: `t` is the number of training iterations done (TrainState.step after an iteration); an
update at t acts on the state that iteration produced (RigL's: on the state it started from, its
optimizer step skipped; see lth_jax.methods.sparse_training.DropAndGrow). Counts are exact and ties go
as in `select` (the earlier position is removed first, and grows last).
"""

import jax
import jax.numpy as jnp
import optax

from lth_jax.sparsity import select


def polynomial_sparsity(t, initial: float, final: float, t0: int, n: int, every: int):
  """Zhu & Gupta's s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3: s_i before t0, s_f from t0 + n dt."""
  progress = jnp.clip((jnp.asarray(t, jnp.float32) - t0) / (n * every), 0.0, 1.0)
  return final + (initial - final) * (1.0 - progress) ** 3


def is_update(t, every: int, first: int = 0, last: int | None = None):
  """True at t = first, first + every, ... up to `last` (inclusive) and never at t = 0."""
  on = (t >= max(first, 1)) & ((t - first) % every == 0)
  return on if last is None else on & (t <= last)


def cosine_drop(t, alpha: float, t_end: int):
  """RigL's drop fraction: alpha/2 (1 + cos(pi t / t_end)), decaying to 0 at t_end and 0 after it."""
  t = jnp.asarray(t, jnp.float32)
  return jnp.where(t < t_end, 0.5 * alpha * (1.0 + jnp.cos(jnp.pi * t / t_end)), 0.0)


def drop_and_grow(params, masks, grow_scores, fraction, which):
  """(new masks, grown): each prunable leaf drops the k = int(fraction * alive) alive weights of
  smallest |w| and grows k at the highest `grow_scores` among the positions inactive after the drop (a
  weight just dropped may come back), so every leaf keeps its count. `grown` marks the connections
  that were inactive before and are active after: only they start anew (zero weight, zeroed
  moments); a weight dropped and grown back in the same update is simply kept. Other leaves are left
  as they are.
  """
  new, grown = [], []
  for p, m, g, w in zip(*(jax.tree.leaves(tree) for tree in (params, masks, grow_scores, which))):
    if not w:
      new.append(m)
      grown.append(jnp.zeros_like(m))
      continue
    alive = m.ravel() != 0
    n = jnp.sum(alive)
    # floor, as rigl's `_get_update_op` casts float32(alive) * drop_fraction to int32; jaxpruner's SET
    # keeps jnp.round(alive * (1 - fraction)) instead (its top-k rounds). We follow rigl, RigL's own code.
    k = (n.astype(jnp.float32) * fraction).astype(jnp.int32)
    stay = select.keep_highest(jnp.abs(p).ravel(), alive, n - k)
    grow = select.keep_highest(g.ravel(), ~stay, k)
    new.append((stay | grow).reshape(m.shape).astype(m.dtype))
    grown.append((grow & ~alive).reshape(m.shape).astype(m.dtype))
  treedef = jax.tree.structure(masks)
  return jax.tree.unflatten(treedef, new), jax.tree.unflatten(treedef, grown)


def reset_moments(tx: optax.GradientTransformation, opt_state, grown):
  """The optimizer state with every params-shaped statistic (momentum, Adam's moments) zeroed where
  `grown` is 1: a newly grown connection starts with fresh moments (rigl's `reset_momentum`,
  jaxpruner's `restart_inner_state`); every other weight keeps its own."""
  return optax.tree_map_params(tx, lambda v, g: jnp.where(g != 0, jnp.zeros_like(v), v), opt_state, grown)
