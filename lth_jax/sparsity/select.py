"""Scores -> masks: the one selection every criterion and method shares.

`fraction` is the fraction of the *currently remaining* prunable weights to remove; masks are
cumulative, so a pruned weight never comes back. The number removed is `round(fraction * remaining)`
(Python's rounding, as torch.nn.utils.prune computes it) and is exact: ties in the score are broken
by position (stable sort), never by removing more or fewer weights. The lowest scores go.

scope="global" ranks all prunable weights together (torch's `global_unstructured`); scope="layerwise"
removes the fraction from each prunable leaf separately, optionally scaled per layer by
`layer_scale`, a {glob pattern over leaf names: factor} dict (the Lottery Ticket paper prunes
LeNet's output layer at half the hidden layers' rate: {"output/*": 0.5}).
"""

import fnmatch

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax.errors import UserError
from lth_jax.sparsity import masks as masks_lib

SCOPES = ("global", "layerwise")


def check(fraction, scope, layer_scale=None) -> None:
  if not 0.0 <= fraction <= 1.0:
    raise UserError(f"pruning fraction {fraction} is outside [0, 1]")
  if scope not in SCOPES:
    raise UserError(f"config.prune.scope={scope!r} is not a scope; allowed: {', '.join(SCOPES)}")
  if layer_scale and scope != "layerwise":
    raise UserError("config.prune.layer_scale needs config.prune.scope='layerwise'")


def _remove_lowest(scores, alive, k: int):
  """Flat alive mask with the k alive entries of lowest score switched off."""
  if k == 0:
    return alive
  order = jnp.argsort(jnp.where(alive, scores, jnp.inf), stable=True)
  return alive.at[order[:k]].set(False)


def _scale(name, layer_scale):
  for pattern, factor in (layer_scale or {}).items():
    if fnmatch.fnmatch(name, pattern):
      return float(factor)
  return 1.0


def prune_by_score(scores, masks, fraction: float, scope: str = "global", which=None,
                   layer_scale=None):
  """Remove the lowest-scoring `fraction` of the remaining prunable weights."""
  check(fraction, scope, layer_scale)
  which = masks_lib.prunable(masks) if which is None else which
  names = [name for name, _ in masks_lib.named_leaves(masks)]
  mask_leaves, treedef = jax.tree.flatten(masks)
  score_leaves = jax.tree.leaves(scores)
  chosen = [i for i, w in enumerate(jax.tree.leaves(which)) if w]
  new_leaves = list(mask_leaves)

  if scope == "global":
    alive = jnp.concatenate([mask_leaves[i].ravel() != 0 for i in chosen])
    flat_scores = jnp.concatenate([score_leaves[i].ravel() for i in chosen])
    alive = _remove_lowest(flat_scores, alive, round(fraction * int(alive.sum())))
    offset = 0
    for i in chosen:
      size = mask_leaves[i].size
      new_leaves[i] = alive[offset:offset + size].reshape(mask_leaves[i].shape).astype(mask_leaves[i].dtype)
      offset += size
  else:
    for i in chosen:
      layer_fraction = min(1.0, fraction * _scale(names[i], layer_scale))
      alive = mask_leaves[i].ravel() != 0
      alive = _remove_lowest(score_leaves[i].ravel(), alive, round(layer_fraction * int(alive.sum())))
      new_leaves[i] = alive.reshape(mask_leaves[i].shape).astype(mask_leaves[i].dtype)
  return jax.tree.unflatten(treedef, new_leaves)


def keep_highest(scores, alive, k):
  """Flat bool array: the k alive entries of highest score (all of them when fewer are alive).

  Jit-able with a traced `k`. Ties go as in `prune_by_score`: the earlier position is removed first.
  It runs inside compiled train steps (gradual, SET, RigL), so it selects without sorting: XLA:CPU's
  sort takes ~70 ms for LeNet's 235k weights, this ~20x less (results/bench_cpu, the RigL rows).
  """
  keys = _order_keys(jnp.where(alive, scores, -jnp.inf))
  threshold = _kth_largest_key(keys, k)
  above, at = keys > threshold, keys == threshold
  # Of the entries at the threshold, the last `need` by position stay: a stable ascending sort puts
  # the earlier ones first, and the first ones go.
  need = k - jnp.sum(above, dtype=jnp.int32)
  from_end = jnp.cumsum(at[::-1].astype(jnp.int32))[::-1]
  return alive & (above | (at & (from_end <= need)))


def _order_keys(scores):
  """uint32 keys in the order of the float32 scores (-0.0 taken as 0.0, as comparisons take it)."""
  scores = scores.astype(jnp.float32)
  # not `scores + 0.0`: XLA folds that away under jit
  bits = jax.lax.bitcast_convert_type(jnp.where(scores == 0, jnp.float32(0), scores), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _kth_largest_key(keys, k):
  """The largest key t with at least k keys >= t: the k-th largest key, found bit by bit (32 counts)."""
  def bit(i, t):
    candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    return jnp.where(jnp.sum(keys >= candidate, dtype=jnp.int32) >= k, candidate, t)
  return jax.lax.fori_loop(0, 32, bit, jnp.uint32(0))


def keep_counts(scores, masks, counts, which=None):
  """Masks that keep, among the alive prunable weights, the highest scores: `counts[j]` in the j-th
  prunable leaf, or, when `counts` is one number, that many over all prunable leaves together.

  Jit-able (counts may be traced); a leaf keeps at most what is alive in it, so masks stay cumulative.
  """
  which = masks_lib.prunable(masks) if which is None else which
  mask_leaves, treedef = jax.tree.flatten(masks)
  score_leaves = jax.tree.leaves(scores)
  chosen = [i for i, w in enumerate(jax.tree.leaves(which)) if w]
  new_leaves = list(mask_leaves)
  if np.ndim(counts) == 0:
    kept = keep_highest(jnp.concatenate([score_leaves[i].ravel() for i in chosen]),
                        jnp.concatenate([mask_leaves[i].ravel() != 0 for i in chosen]), counts)
    pieces = jnp.split(kept, np.cumsum([mask_leaves[i].size for i in chosen])[:-1])
  else:
    pieces = [keep_highest(score_leaves[i].ravel(), mask_leaves[i].ravel() != 0, counts[j])
              for j, i in enumerate(chosen)]
  for i, piece in zip(chosen, pieces):
    new_leaves[i] = piece.reshape(mask_leaves[i].shape).astype(mask_leaves[i].dtype)
  return jax.tree.unflatten(treedef, new_leaves)


def rate_per_round(target: float, rounds: int) -> float:
  """Fraction of the remaining weights to remove each round to reach `target` after `rounds`."""
  return 1.0 - (1.0 - target) ** (1.0 / rounds)
