"""Unstructured pruning: a registered criterion's scores, selected by `select.prune_by_score`.

`fraction` is the fraction of the *currently remaining* prunable weights to remove; masks are
cumulative (see `select` for the exact counting and tie rule).
"""

import jax

from lth_jax.sparsity import criteria
from lth_jax.sparsity import distribution
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity.select import SCOPES, keep_counts, prune_by_score, rate_per_round  # noqa: F401  (public)


def prune(criterion: str, params, masks, fraction: float, scope: str = "global", which=None,
          layer_scale=None, context: criteria.Context = criteria.Context()):
  """Remove the `fraction` of the remaining prunable weights that `criterion` scores lowest."""
  scores = criteria.get(criterion)(params, masks, context)
  return prune_by_score(scores, masks, fraction, scope, which, layer_scale)


def magnitude(params, masks, fraction: float, scope: str = "global", which=None, layer_scale=None):
  """Magnitude pruning: remove the remaining weights of smallest |w| (L1Unstructured)."""
  return prune("magnitude", params, masks, fraction, scope, which, layer_scale)


def random(key: jax.Array, masks, fraction: float, scope: str = "global", which=None, layer_scale=None):
  """Random pruning: remove a uniformly random `fraction` of the remaining weights."""
  return prune("random", masks, masks, fraction, scope, which, layer_scale, criteria.Context(key=key))


def target_counts(masks, which, kind: str, keep: int, layer_map=None):
  """`distribution.layer_counts` for the prunable leaves of `masks`: per-leaf counts, or `keep` (global)."""
  leaves = [(name, m.shape) for (name, m), w in zip(masks_lib.named_leaves(masks), jax.tree.leaves(which)) if w]
  counts = distribution.layer_counts(kind, [s for _, s in leaves], [n for n, _ in leaves], keep, layer_map)
  return keep if counts is None else counts


def prune_distributed(criterion: str, params, masks, fraction: float, kind: str, which=None, layer_map=None,
                      context: criteria.Context = criteria.Context()):
  """Remove round(fraction * remaining) of the remaining prunable weights in all, shared among the layers
  as the distribution `kind` says for the sparsity reached (see `lth_jax.sparsity.distribution`)."""
  which = masks_lib.prunable(masks) if which is None else which
  remaining, _ = masks_lib.count(masks, which)
  keep = remaining - round(fraction * remaining)
  scores = criteria.get(criterion)(params, masks, context)
  return keep_counts(scores, masks, target_counts(masks, which, kind, keep, layer_map), which)
