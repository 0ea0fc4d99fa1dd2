"""Unstructured pruning: a registered criterion's scores, selected by `select.prune_by_score`.

Every function here takes `(params, masks, amount, scope, ...)` in that order (`prune` and its kin
take the criterion first), and returns new masks; masks are cumulative, a pruned weight never comes
back. Every function takes an N:M `pattern` too: pruning to its sparsity 1 - n/m leaves exactly n alive
weights in every group of m (lth_jax.sparsity.nm). The amount is said one of two ways:

- `fraction` (`prune`, `magnitude`, `random`): the fraction of the *currently remaining* prunable
  weights to remove, `round(fraction * remaining)` of them (see `select` for the exact counting and
  tie rule);
- `sparsity` (`prune_to`, `magnitude_to`, `random_to`): the fraction of *all* prunable weights that
  is pruned afterwards, `round(sparsity * total)` of them, whatever was pruned before.

    m = pruning.magnitude(params, m, 0.2)       # remove 20% of what remains
    m = pruning.magnitude_to(params, m, 0.9)    # prune until 90% of the prunable weights are 0
"""

import jax

from lth_jax.sparsity import criteria
from lth_jax.sparsity import distribution
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity import select
from lth_jax.sparsity.masks import PyTree
from lth_jax.sparsity.nm import NM
from lth_jax.sparsity.select import SCOPES, keep_counts, prune_by_score, rate_per_round  # noqa: F401  (public)

__all__ = ["SCOPES", "prune", "magnitude", "random", "prune_to", "magnitude_to", "random_to", "prune_iteratively",
           "prune_distributed", "exponential_kept", "target_counts", "keep_counts", "prune_by_score", "rate_per_round", "NM"]


def prune(criterion: str | criteria.Criterion, params: PyTree, masks: PyTree, fraction: float, scope: str = "global",
          which: PyTree | None = None, layer_scale: dict[str, float] | None = None,
          context: criteria.Context = criteria.Context(), pattern: NM | None = None) -> PyTree:
  """Removes the `fraction` of the remaining prunable weights that `criterion` scores lowest.

  Args:
    criterion: a registered criterion's name (`criteria.names()`) or a function
      `(params, masks, context) -> scores`, higher = keep.
    params: the parameters the criterion scores.
    masks: the current masks, shaped like `params`.
    fraction: of the remaining prunable weights (of each leaf's, for "layerwise"), in [0, 1].
    scope: "global" (one ranking over all prunable weights) or "layerwise" (each leaf alone).
    which: bool pytree of the prunable leaves (default: `masks.prunable`).
    layer_scale: {glob over leaf names: factor} on each leaf's fraction, "layerwise" only.
    context: what the criterion reads besides the weights (a key, a batch, ...).
    pattern: an N:M pattern (`nm.NM`, e.g. `nm.parse("2:4")`) each selection keeps as its floor: n
      alive of every m along each kernel's input axis (lth_jax.sparsity.nm); None for unstructured.

  Returns:
    The new masks: `round(fraction * remaining)` fewer alive weights (per leaf for "layerwise").
  """
  score = criteria.get(criterion) if isinstance(criterion, str) else criterion
  scores = score(params, masks, context)
  return prune_by_score(scores, masks, fraction, scope, which, layer_scale, pattern)


def magnitude(params: PyTree, masks: PyTree, fraction: float, scope: str = "global", which: PyTree | None = None,
              layer_scale: dict[str, float] | None = None, pattern: NM | None = None) -> PyTree:
  """Magnitude pruning: removes the remaining weights of smallest |w| (torch's L1Unstructured).

  Args:
    params: the weights whose magnitudes rank them.
    masks: the current masks, shaped like `params`.
    fraction: of the remaining prunable weights to remove, in [0, 1].
    scope: "global" or "layerwise".
    which: bool pytree of the prunable leaves (default: `masks.prunable`).
    layer_scale: {glob over leaf names: factor} on each leaf's fraction, "layerwise" only.
    pattern: an N:M pattern (`nm.NM`, e.g. `nm.parse("2:4")`) each selection keeps as its floor: n
      alive of every m along each kernel's input axis (lth_jax.sparsity.nm); None for unstructured.

  Returns:
    The new masks, as `prune` counts them.
  """
  return prune("magnitude", params, masks, fraction, scope, which, layer_scale, pattern=pattern)


def random(params: PyTree, masks: PyTree, fraction: float, scope: str = "global", which: PyTree | None = None,
           layer_scale: dict[str, float] | None = None, pattern: NM | None = None, *, key: jax.Array) -> PyTree:
  """Random pruning: removes a uniformly random `fraction` of the remaining weights.

  Args:
    params: not read (random scores need only the masks' shapes); taken so that every pruning
      function is called alike.
    masks: the current masks.
    fraction: of the remaining prunable weights to remove, in [0, 1].
    scope: "global" or "layerwise".
    which: bool pytree of the prunable leaves (default: `masks.prunable`).
    layer_scale: {glob over leaf names: factor} on each leaf's fraction, "layerwise" only.
    pattern: an N:M pattern (`nm.NM`, e.g. `nm.parse("2:4")`) each selection keeps as its floor: n
      alive of every m along each kernel's input axis (lth_jax.sparsity.nm); None for unstructured.
    key: the PRNG key the selection is drawn with.

  Returns:
    The new masks, as `prune` counts them.
  """
  return prune("random", params, masks, fraction, scope, which, layer_scale, criteria.Context(key=key), pattern)


def prune_to(criterion: str | criteria.Criterion, params: PyTree, masks: PyTree, sparsity: float, scope: str = "global",
             which: PyTree | None = None, context: criteria.Context = criteria.Context()) -> PyTree:
  """Prunes by `criterion` until `sparsity` of the prunable weights are pruned.

  Args:
    criterion: a registered criterion's name or a function `(params, masks, context) -> scores`.
    params: the parameters the criterion scores.
    masks: the current masks, shaped like `params`.
    sparsity: the fraction of all prunable weights (of each leaf's, for "layerwise") that is
      pruned afterwards, in [0, 1].
    scope: "global" (one ranking over all prunable weights) or "layerwise" (each leaf alone).
    which: bool pytree of the prunable leaves (default: `masks.prunable`).
    context: what the criterion reads besides the weights.

  Returns:
    Masks with `total - round(sparsity * total)` alive prunable weights, `total` counted over all
    prunable leaves ("global") or each leaf ("layerwise"). Masks are cumulative: where the masks are
    already sparser than that, they stay as they are.
  """
  if not 0.0 <= sparsity <= 1.0:
    raise ValueError(f"sparsity={sparsity} is outside [0, 1]")
  select.check(0.0, scope)
  select.prunable_leaves(masks, which)   # ValueError when there is nothing to prune
  rows = masks_lib.layer_report(masks, which)
  kept = [row["total"] - round(sparsity * row["total"]) for row in rows]
  if scope == "global":
    total = sum(row["total"] for row in rows)
    kept = total - round(sparsity * total)
  score = criteria.get(criterion) if isinstance(criterion, str) else criterion
  return keep_counts(score(params, masks, context), masks, kept, which)


def magnitude_to(params: PyTree, masks: PyTree, sparsity: float, scope: str = "global",
                 which: PyTree | None = None) -> PyTree:
  """Magnitude pruning to a target sparsity: `prune_to` by |w|.

  Args:
    params: the weights whose magnitudes rank them.
    masks: the current masks, shaped like `params`.
    sparsity: the fraction of the prunable weights pruned afterwards, in [0, 1].
    scope: "global" or "layerwise".
    which: bool pytree of the prunable leaves (default: `masks.prunable`).

  Returns:
    The new masks, as `prune_to` counts them.
  """
  return prune_to("magnitude", params, masks, sparsity, scope, which)


def random_to(params: PyTree, masks: PyTree, sparsity: float, scope: str = "global", which: PyTree | None = None,
              *, key: jax.Array) -> PyTree:
  """Random pruning to a target sparsity: `prune_to` by uniform scores.

  Args:
    params: not read; taken so that every pruning function is called alike.
    masks: the current masks.
    sparsity: the fraction of the prunable weights pruned afterwards, in [0, 1].
    scope: "global" or "layerwise".
    which: bool pytree of the prunable leaves (default: `masks.prunable`).
    key: the PRNG key the selection is drawn with.

  Returns:
    The new masks, as `prune_to` counts them.
  """
  return prune_to("random", params, masks, sparsity, scope, which, criteria.Context(key=key))


def exponential_kept(start: int, density: float, t: float) -> int:
  """Weights kept at fraction `t` of SynFlow's exponential schedule.

  From `start` alive weights to `density` of them: start - int((1 - density^t) * start), the count
  Synaptic-Flow's `prune_loop` keeps (its `Pruner._global_mask` zeroes k = int((1 - density^t) * N)
  scores: floor, not round).

  Args:
    start: the weights alive before the schedule.
    density: the fraction of `start` alive at its end.
    t: how far along the schedule, in [0, 1].

  Returns:
    The number of weights alive at `t`.
  """
  return start - int((1.0 - density ** t) * start)


def prune_iteratively(criterion: str | criteria.Criterion, params: PyTree, masks: PyTree, fraction: float,
                      iterations: int, scope: str = "global", which: PyTree | None = None,
                      layer_scale: dict[str, float] | None = None,
                      context: criteria.Context = criteria.Context(), pattern: NM | None = None) -> PyTree:
  """Removes `fraction` of the remaining weights in `iterations` rescorings, exponentially spaced.

  SynFlow's schedule (Tanaka et al. 2020): after iteration i < k of k, `exponential_kept(N, 1 -
  fraction, i/k)` of the N weights alive at the start remain, as Synaptic-Flow's `prune_loop`
  counts; after the last exactly as many as one global `prune(..., fraction)` leaves, counted over
  `which` (scope="layerwise" removes each step's fraction from every leaf, to rounding). That last
  count is lth_jax's one for every criterion and schedule, N - round(fraction * N); `prune_loop`'s
  last round keeps N - int(fraction * N), one weight more when fraction * N has a fractional part of
  one half or more.

  Args:
    criterion: a registered criterion's name or a function `(params, masks, context) -> scores`.
    params: the parameters the criterion scores.
    masks: the current masks.
    fraction: of the remaining prunable weights to remove in all, in [0, 1].
    iterations: how many times the criterion rescores.
    scope: "global" or "layerwise".
    which: bool pytree of the prunable leaves (default: `masks.prunable`).
    layer_scale: {glob over leaf names: factor} on each leaf's fraction, "layerwise" only.
    context: what the criterion reads besides the weights.
    pattern: an N:M pattern (`nm.NM`, e.g. `nm.parse("2:4")`) each selection keeps as its floor: n
      alive of every m along each kernel's input axis (lth_jax.sparsity.nm); None for unstructured.

  Returns:
    The new masks.
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


def target_counts(masks: PyTree, which: PyTree, kind: str, keep: int,
                  layer_map: dict[str, float] | None = None) -> int | list[int]:
  """`distribution.layer_counts` for the prunable leaves of `masks`.

  Args:
    masks: the current masks.
    which: bool pytree of the prunable leaves.
    kind: a distribution, one of `distribution.KINDS`.
    keep: the weights to keep in all.
    layer_map: {glob over leaf names: sparsity}, for kind "map".

  Returns:
    The count to keep in each prunable leaf, or `keep` itself for "global".
  """
  leaves = [(name, m.shape) for (name, m), w in zip(masks_lib.named_leaves(masks), jax.tree.leaves(which)) if w]
  counts = distribution.layer_counts(kind, [s for _, s in leaves], [n for n, _ in leaves], keep, layer_map)
  return keep if counts is None else counts


def prune_distributed(criterion: str | criteria.Criterion, params: PyTree, masks: PyTree, fraction: float, kind: str,
                      which: PyTree | None = None, layer_map: dict[str, float] | None = None,
                      context: criteria.Context = criteria.Context(), iterations: int = 1,
                      pattern: NM | None = None) -> PyTree:
  """Removes round(fraction * remaining) of the remaining prunable weights, shared among the layers
  as the distribution `kind` says for the sparsity reached (see `lth_jax.sparsity.distribution`).

  With `iterations` > 1 the criterion rescores that many times on SynFlow's exponential schedule, per
  layer: after iteration i < k of k a layer that started with a alive weights and ends with b keeps
  `exponential_kept(a, b / a, i/k)` (for "global", the whole network keeps `exponential_kept(N, 1 -
  fraction, i/k)` as in `prune_iteratively`); after the last, exactly the one-shot counts.

  Args:
    criterion: a registered criterion's name or a function `(params, masks, context) -> scores`.
    params: the parameters the criterion scores.
    masks: the current masks.
    fraction: of the remaining prunable weights to remove in all, in [0, 1].
    kind: how the kept weights are shared among the layers, one of `distribution.KINDS`.
    which: bool pytree of the prunable leaves (default: `masks.prunable`).
    layer_map: {glob over leaf names: sparsity}, for kind "map".
    context: what the criterion reads besides the weights.
    iterations: how many times the criterion rescores.
    pattern: an N:M pattern (`nm.NM`, e.g. `nm.parse("2:4")`) each selection keeps as its floor: n
      alive of every m along each kernel's input axis (lth_jax.sparsity.nm); None for unstructured.

  Returns:
    The new masks.
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
