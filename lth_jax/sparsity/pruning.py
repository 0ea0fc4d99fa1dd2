"""Unstructured pruning: a registered criterion's scores, selected by `select.prune_by_score`.

`fraction` is the fraction of the *currently remaining* prunable weights to remove; masks are
cumulative (see `select` for the exact counting and tie rule).
"""

import jax

from lth_jax.sparsity import criteria
from lth_jax.sparsity.select import SCOPES, prune_by_score, rate_per_round  # noqa: F401  (public)


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
