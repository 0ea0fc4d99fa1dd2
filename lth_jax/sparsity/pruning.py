"""Unstructured pruning: a registered criterion's scores, selected by `select.prune_by_score`.

`fraction` is the fraction of the *currently remaining* prunable weights to remove; masks are
cumulative (see `select` for the exact counting and tie rule). Every function takes an N:M `pattern`
(`nm.NM`, e.g. `nm.parse("2:4")`): the selection keeps n of every m along each kernel's input axis as its
floor, so pruning to the pattern's sparsity 1 - n/m gives exactly n in every group (lth_jax.sparsity.nm).
"""

import jax

from lth_jax.sparsity import criteria
from lth_jax.sparsity import distribution
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity import select
from lth_jax.sparsity.nm import NM  # noqa: F401  (public)
from lth_jax.sparsity.select import SCOPES, keep_counts, prune_by_score, rate_per_round  # noqa: F401  (public)


def prune(criterion: str | criteria.Criterion, params, masks, fraction: float, scope: str = "global", which=None,
          layer_scale=None, context: criteria.Context = criteria.Context(), pattern: NM | None = None):
  """Remove the `fraction` of the remaining prunable weights that `criterion` (a name or a function)
  scores lowest."""
  score = criteria.get(criterion) if isinstance(criterion, str) else criterion
  scores = score(params, masks, context)
  return prune_by_score(scores, masks, fraction, scope, which, layer_scale, pattern)


def magnitude(params, masks, fraction: float, scope: str = "global", which=None, layer_scale=None,
              pattern: NM | None = None):
  """Magnitude pruning: remove the remaining weights of smallest |w| (L1Unstructured)."""
  return prune("magnitude", params, masks, fraction, scope, which, layer_scale, pattern=pattern)


def random(key: jax.Array, masks, fraction: float, scope: str = "global", which=None, layer_scale=None,
           pattern: NM | None = None):
  """Random pruning: remove a uniformly random `fraction` of the remaining weights."""
  return prune("random", masks, masks, fraction, scope, which, layer_scale, criteria.Context(key=key), pattern)


def exponential_kept(start: int, density: float, t: float) -> int:
  """Weights kept at fraction `t` of SynFlow's exponential schedule from `start` alive weights to
  `density` of them: start - int((1 - density^t) * start), the count Synaptic-Flow's `prune_loop`
  keeps (its `Pruner._global_mask` zeroes k = int((1 - density^t) * N) scores: floor, not round)."""
  return start - int((1.0 - density ** t) * start)


def prune_iteratively(criterion: str | criteria.Criterion, params, masks, fraction: float, iterations: int, scope: str = "global",
                      which=None, layer_scale=None, context: criteria.Context = criteria.Context(),
                      pattern: NM | None = None):
  """Remove `fraction` of the remaining weights in `iterations` rescorings, exponentially spaced.

  SynFlow's schedule (Tanaka et al. 2020): after iteration i < k of k, `exponential_kept(N, 1 -
  fraction, i/k)` of the N weights alive at the start remain, as Synaptic-Flow's `prune_loop`
  counts; after the last exactly as many as one global `prune(..., fraction)` leaves, counted over
  `which` (scope="layerwise" removes each step's fraction from every leaf, to rounding). That last
  count is lth_jax's one for every criterion and schedule, N - round(fraction * N); `prune_loop`'s
  last round keeps N - int(fraction * N), one weight more when fraction * N has a fractional part of
  one half or more.
  """
  if iterations == 1:   # exactly `prune`, whatever the scope
    return prune(criterion, params, masks, fraction, scope, which, layer_scale, context, pattern)
  start, _ = masks_lib.count(masks, which)
  final = start - round(fraction * start)
  for i in range(1, iterations + 1):
    remaining, _ = masks_lib.count(masks, which)
    target = final if i == iterations else exponential_kept(start, 1.0 - fraction, i / iterations)
    step_fraction = (remaining - target) / remaining if remaining else 0.0
    masks = prune(criterion, params, masks, step_fraction, scope, which, layer_scale, context, pattern)
  return masks


def target_counts(masks, which, kind: str, keep: int, layer_map=None):
  """`distribution.layer_counts` for the prunable leaves of `masks`: per-leaf counts, or `keep` (global)."""
  leaves = [(name, m.shape) for (name, m), w in zip(masks_lib.named_leaves(masks), jax.tree.leaves(which)) if w]
  counts = distribution.layer_counts(kind, [s for _, s in leaves], [n for n, _ in leaves], keep, layer_map)
  return keep if counts is None else counts


def prune_distributed(criterion: str | criteria.Criterion, params, masks, fraction: float, kind: str, which=None, layer_map=None,
                      context: criteria.Context = criteria.Context(), iterations: int = 1, pattern: NM | None = None):
  """Remove round(fraction * remaining) of the remaining prunable weights in all, shared among the layers
  as the distribution `kind` says for the sparsity reached (see `lth_jax.sparsity.distribution`).

  With `iterations` > 1 the criterion rescores that many times on SynFlow's exponential schedule, per
  layer: after iteration i < k of k a layer that started with a alive weights and ends with b keeps
  `exponential_kept(a, b / a, i/k)` (for "global", the whole network keeps `exponential_kept(N, 1 -
  fraction, i/k)` as in `prune_iteratively`); after the last, exactly the one-shot counts.
  """
  select.prunable_leaves(masks, which)   # ValueError when there is nothing to prune
  which = masks_lib.prunable(masks) if which is None else which
  remaining, _ = masks_lib.count(masks, which)
  keep = remaining - round(fraction * remaining)
  score = criteria.get(criterion) if isinstance(criterion, str) else criterion
  final = target_counts(masks, which, kind, keep, layer_map)
  start = remaining if isinstance(final, int) else [row["remaining"] for row in masks_lib.layer_report(masks, which)]
  for i in range(1, iterations + 1):
    if i == iterations:
      counts = final
    elif isinstance(final, int):
      counts = exponential_kept(start, 1.0 - fraction, i / iterations)
    else:
      counts = [exponential_kept(a, b / a, i / iterations) if a else 0 for a, b in zip(start, final)]
    masks = keep_counts(score(params, masks, context), masks, counts, which, pattern)
  return masks
