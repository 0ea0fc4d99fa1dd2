"""Scores -> masks: the one selection every criterion and method shares.

`fraction` is the fraction of the *currently remaining* prunable weights to remove; masks are
cumulative, so a pruned weight never comes back. The number removed is `round(fraction * remaining)`
(Python's rounding, as torch.nn.utils.prune computes it) and is exact: ties in the score are broken
by position (stable sort), never by removing more or fewer weights. The lowest scores go.

scope="global" ranks all prunable weights together (torch's `global_unstructured`); scope="layerwise"
removes the fraction from each prunable leaf separately, optionally scaled per layer by
`layer_scale`, a {glob pattern over leaf names: factor} dict (the Lottery Ticket paper prunes
LeNet's output layer at half the hidden layers' rate: {"output/*": 0.5}).

One top-k serves every caller: `keep_highest` (`prune_by_score` and `keep_counts` go through it). Given
an N:M `pattern` (lth_jax.sparsity.nm), the n best alive weights of every group of m are kept first, as a
floor, and the count is filled from the rest: at the pattern's own sparsity, 1 - n/m, exactly n per group.
Scores must be finite at the weights still alive: given as arrays, a NaN or an infinity there is refused
with a ValueError (a criterion that overflowed would otherwise pick weights by accident). Traced inside a
compiled step, where nothing can be refused, a NaN of either sign ranks below every number (it goes
first), so a criterion and its negation (`criteria.inverted`) treat it alike.
"""

import fnmatch
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity import nm

SCOPES = ("global", "layerwise")


def check(fraction, scope, layer_scale=None) -> None:
  """ValueError unless `fraction` is in [0, 1], `scope` one of SCOPES, and `layer_scale` only with "layerwise"."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction={fraction} is outside [0, 1]")
  if scope not in SCOPES:
    raise ValueError(f"scope={scope!r} is not a scope; allowed: {', '.join(SCOPES)}")
  if layer_scale and scope != "layerwise":
    raise ValueError(f"layer_scale={layer_scale!r} needs scope='layerwise', got scope={scope!r}")


def prunable_leaves(masks, which=None) -> list[int]:
  """Indices (in `jax.tree.leaves` order) of the leaves `which` marks prunable; ValueError when there are none."""
  flags = jax.tree.leaves(masks_lib.prunable(masks) if which is None else which)
  chosen = [i for i, w in enumerate(flags) if w]
  if not chosen:
    rule = ("`which` marks none of them" if which is not None
            else "none has ndim >= 2, the default rule of masks.prunable; pass `which`")
    raise ValueError(f"no prunable leaf among the {len(flags)} leaves of masks: {rule}")
  return chosen


def _check_finite(scores, masks, chosen) -> None:
  """ValueError naming the first leaf whose scores are NaN or infinite at an alive weight (arrays only)."""
  named, score_leaves = masks_lib.named_leaves(masks), jax.tree.leaves(scores)
  for i in chosen:
    (name, m), s = named[i], score_leaves[i]
    if isinstance(s, jax.core.Tracer) or isinstance(m, jax.core.Tracer):
      continue   # traced: the ordering in `_order_keys` applies
    # on the host: under a trace even concrete arrays would become tracers through jnp
    bad = int(np.sum(~np.isfinite(np.asarray(s, np.float32)) & (np.asarray(m) != 0)))
    if bad:
      raise ValueError(f"scores for leaf {name!r} hold {bad} NaN or infinite value(s) at unpruned weights; "
                       "scores must be finite (did the criterion overflow, or the weights diverge?)")


def _scale(name, layer_scale):
  for pattern, factor in (layer_scale or {}).items():
    if fnmatch.fnmatch(name, pattern):
      return float(factor)
  return 1.0


def prune_by_score(scores, masks, fraction: float, scope: str = "global", which=None,
                   layer_scale=None, pattern: nm.NM | None = None):
  """Remove the lowest-scoring `fraction` of the remaining prunable weights.

  Args:
    scores: pytree shaped like `masks`, higher = keep; finite at every alive prunable weight.
    masks: the current masks (cumulative: a pruned weight stays pruned).
    fraction: of the remaining prunable weights (each leaf's, for "layerwise"), in [0, 1].
    scope: "global" (one ranking over all prunable weights) or "layerwise".
    which: bool pytree of prunable leaves (default: `masks.prunable`).
    layer_scale: {glob: factor} on each leaf's fraction, "layerwise" only.
    pattern: an N:M pattern the selection keeps as its floor (`keep_counts`).
  Returns:
    The new masks: round(fraction * remaining) fewer alive weights (per leaf for "layerwise").
  """
  check(fraction, scope, layer_scale)
  chosen = prunable_leaves(masks, which)
  leaves = jax.tree.leaves(masks)
  alive = [int(jnp.count_nonzero(leaves[i])) for i in chosen]
  if scope == "global":
    total = sum(alive)
    counts = total - round(fraction * total)
  else:
    names = [name for name, _ in masks_lib.named_leaves(masks)]
    counts = [n - round(min(1.0, fraction * _scale(names[i], layer_scale)) * n) for i, n in zip(chosen, alive)]
  return keep_counts(scores, masks, counts, which, pattern)


@jax.jit   # one compiled selection per shape, also when called eagerly (`prune_by_score`)
def keep_highest(scores, alive, k, forced=None):
  """Flat bool array: the k alive entries of highest score (all of them when fewer are alive).

  `forced` (flat bool, optional) marks entries kept before any other, whatever their score: k is raised to
  their number when below it.

  Jit-able with a traced `k`. Ties go as in `prune_by_score`: the earlier position is removed first.
  It runs inside compiled train steps (gradual, SET, RigL), so it selects without sorting: XLA:CPU's
  sort takes ~70 ms for LeNet's 235k weights, this ~20x less (results/bench_cpu, the RigL rows).
  """
  keys = _order_keys(scores, alive)
  if forced is not None:   # above every score's key, +inf's included (0xff800000)
    keys = jnp.where(forced & alive, jnp.uint32(0xFFFFFFFF), keys)
    k = jnp.maximum(k, jnp.sum(forced & alive, dtype=jnp.int32))
  threshold = _kth_largest_key(keys, k)
  above, at = keys > threshold, keys == threshold
  # Of the entries at the threshold, the last `need` by position stay: a stable ascending sort puts
  # the earlier ones first, and the first ones go.
  need = k - jnp.sum(above, dtype=jnp.int32)
  from_end = jnp.cumsum(at[::-1].astype(jnp.int32))[::-1]
  return alive & (above | (at & (from_end <= need)))


def _order_keys(scores, alive):
  """uint32 keys in the order of the float32 scores (-0.0 taken as 0.0, as comparisons take it), NaN of
  either sign (key 1) below -inf (0x007fffff); a dead entry's key, 0, is below every alive one's, so it is
  never counted among the k."""
  scores = scores.astype(jnp.float32)
  # not `scores + 0.0`: XLA folds that away under jit
  bits = jax.lax.bitcast_convert_type(jnp.where(scores == 0, jnp.float32(0), scores), jnp.uint32)
  keys = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))
  keys = jnp.where(jnp.isnan(scores), jnp.uint32(1), keys)
  return jnp.where(alive, keys, jnp.uint32(0))


def _kth_largest_key(keys, k):
  """The largest key t with at least k keys >= t: the k-th largest key, found bit by bit (32 counts)."""
  def bit(i, t):
    candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    return jnp.where(jnp.sum(keys >= candidate, dtype=jnp.int32) >= k, candidate, t)
  return jax.lax.fori_loop(0, 32, bit, jnp.uint32(0))


def keep_counts(scores, masks, counts, which=None, pattern: nm.NM | None = None):
  """Masks that keep, among the alive prunable weights, the highest scores: `counts[j]` in the j-th
  prunable leaf, or, when `counts` is one number, that many over all prunable leaves together.

  Jit-able (counts may be traced); a leaf keeps at most what is alive in it, so masks stay cumulative.
  Scores given as arrays must be finite at the alive prunable weights (ValueError otherwise).
  With an N:M `pattern`, the n highest alive scores of every group of m along each leaf's input axis
  stay first (`nm.top_n_per_group`), and the count is filled with the highest of the other alive weights.
  A count below that floor is refused (ValueError) when given as a number; traced, it keeps the floor.
  """
  chosen = prunable_leaves(masks, which)
  mask_leaves, treedef = jax.tree.flatten(masks)
  score_leaves = jax.tree.leaves(scores)
  _check_finite(scores, masks, chosen)
  alive = [mask_leaves[i] != 0 for i in chosen]
  forced = [None] * len(chosen)
  if pattern is not None:
    named = masks_lib.named_leaves(masks)
    names = [named[i][0] for i in chosen]
    forced = _pattern_floor([score_leaves[i] for i in chosen], alive, names, pattern)
    _check_floor(counts, forced, names, pattern)
  new_leaves = list(mask_leaves)
  if np.ndim(counts) == 0:
    kept = keep_highest(_flat([score_leaves[i] for i in chosen]), _flat(alive), counts,
                        None if pattern is None else _flat(forced))
    pieces = jnp.split(kept, np.cumsum([mask_leaves[i].size for i in chosen])[:-1])
  else:
    pieces = [keep_highest(score_leaves[i].ravel(), a.ravel(), counts[j], None if f is None else f.ravel())
              for j, (i, a, f) in enumerate(zip(chosen, alive, forced))]
  for i, piece in zip(chosen, pieces):
    new_leaves[i] = piece.reshape(mask_leaves[i].shape).astype(mask_leaves[i].dtype)
  return jax.tree.unflatten(treedef, new_leaves)


def _flat(arrays):
  return jnp.concatenate([a.ravel() for a in arrays])


def _pattern_floor(scores, alive, names, pattern: nm.NM) -> list:
  """Per leaf: its n best alive weights in every group of m (ValueError naming a leaf that cannot hold
  the pattern)."""
  for name, a in zip(names, alive):
    why = nm.misfit(a.shape, pattern)
    if why:
      raise ValueError(f"leaf {name!r} cannot hold the {pattern} pattern: {why}")
  return [_group_floor(s, a, pattern) for s, a in zip(scores, alive)]


@functools.partial(jax.jit, static_argnames="pattern")   # one program per shape, not one per operation
def _group_floor(scores, alive, pattern: nm.NM):
  # a dead weight's key, 0, is below every alive one's: it comes up only where fewer than n are alive
  return nm.top_n_per_group(_order_keys(scores, alive), pattern) & alive


def _check_floor(counts, forced, names, pattern: nm.NM) -> None:
  """ValueError when a count given as a number keeps fewer weights than the pattern's floor."""
  if any(isinstance(x, jax.core.Tracer) for x in [*jax.tree.leaves(counts), *forced]):
    return
  floors = [int(np.count_nonzero(np.asarray(f))) for f in forced]
  if np.ndim(counts) == 0:
    rows = [("the prunable leaves together", counts, sum(floors))]
  else:
    rows = zip(names, counts, floors)
  for name, count, floor in rows:
    if int(count) < floor:
      raise ValueError(f"keeping {int(count)} weights of {name} goes below the {pattern} pattern's {floor} (n of "
                       f"every m); a {pattern} pattern reaches at most sparsity {pattern.sparsity:g}")


def rate_per_round(target: float, rounds: int) -> float:
  """Fraction of the remaining weights to remove each round to reach `target` after `rounds`."""
  return 1.0 - (1.0 - target) ** (1.0 / rounds)
