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
  """
  order = jnp.argsort(jnp.where(alive, scores, -jnp.inf), stable=True)
  ranks = jnp.zeros(order.shape, jnp.int32).at[order].set(jnp.arange(order.size, dtype=jnp.int32))
  return alive & (ranks >= order.size - k)


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
