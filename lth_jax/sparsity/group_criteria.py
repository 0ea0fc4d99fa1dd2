"""Structured criteria on channel groups: which channels of each `graph.Group` to keep.

A channel's score reads every slice of its group that the criterion concerns (`graph.Group`: channel c is
the positions `index[c]` along `axis` of each member leaf):

- "l1", "l2": the L1 norm / the squared L2 norm of all the channel's kernel entries (leaves of ndim >= 2,
  as `masks.prunable`), summed over the group's slices: the producing conv's output filter *and* the
  consuming layers' input weights, as Torch-Pruning's `GroupNormImportance` (p=1 / p=2, which also sums
  |w|^p without a square root).
- "l1_filter": Li et al. 2017's L1 norm of the output filters alone: the kernel slices along their leaf's
  last axis (Flax's output features), not the consumers' input weights; Torch-Pruning's
  `MagnitudeImportance(p=1, group_reduction="first")`. Per layer ("layerwise") it is Li et al.'s rule.
- "bn_scale": network slimming's |gamma| (Liu et al. 2017), summed over the group's BatchNorm scale slices
  (leaves named '.../scale' of ndim 1); a residual stream's group sums every BatchNorm feeding it.
- "taylor": Molchanov et al. 2019's first-order Taylor estimate of the loss change when the whole channel is
  removed, |sum over all the group's entries of w * dL/dw| (their I^(1)_S for a group S, with the absolute
  value in place of their square: the same ranking). Torch-Pruning's `GroupTaylorImportance` is close but
  not the same: it takes the absolute value per entry (default) or per layer (`multivariable=True`) and
  then averages over layers; ours sums the signed products of the whole group first, as the paper's group
  contribution does. Entries whose leaf `grads` does not hold (BatchNorm statistics) are left out.

A group with no slice the criterion reads (e.g. no BatchNorm for "bn_scale") scores None and is left
whole. Selection removes `round(ratio * channels)` channels of lowest score, either over all scored groups
together (scope "global", one threshold as Liu et al.'s) or in each group separately ("layerwise"); ties go
by position (group order, then channel index). A group is never emptied: if every one of its channels
would go, the one of highest score (the first on ties) stays, so a few fewer than asked may go.

The result is a keep-list for `graph.channel_mask` / `graph.shrink`; `channel_mask` gives the ordinary
0/1 mask pytree every method, metric and report reads. `producers` names the layers that make a group's
channels; `bn_scale_penalty` is network slimming's L1 term on the groups' BatchNorm scales.
"""

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from lth_jax.sparsity import graph, masks

CRITERIA = ("l1", "l2", "l1_filter", "bn_scale", "taylor")
SCOPES = ("global", "layerwise")


def _is_kernel(s: graph.Slice, leaf) -> bool:
  return np.ndim(leaf) >= 2


def _is_output_filter(s: graph.Slice, leaf) -> bool:
  return np.ndim(leaf) >= 2 and s.axis == np.ndim(leaf) - 1


def _is_bn_scale(s: graph.Slice, leaf) -> bool:
  return np.ndim(leaf) == 1 and s.leaf.rsplit("/", 1)[-1] == "scale"


def _per_position(values: np.ndarray, axis: int) -> np.ndarray:
  """values summed over every axis but `axis`: one number per position along it."""
  return np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1).sum(axis=1)


def _slice_sum(per_position: np.ndarray, s: graph.Slice) -> np.ndarray:
  """One number per channel of the group: per_position summed over the channel's positions in slice s."""
  return np.asarray([per_position[list(positions)].sum() for positions in s.index])


def _summed(tree, group: graph.Group, include, entry) -> np.ndarray | None:
  """sum over the group's slices that include(slice, leaf) accepts of entry(name, leaf values), per channel.

  None when it accepts none.
  """
  leaves, total = dict(masks.named_leaves(tree)), None
  for s in group.slices:
    leaf = leaves.get(s.leaf)
    if leaf is None or not include(s, leaf):
      continue
    part = _slice_sum(_per_position(entry(s.leaf, np.asarray(leaf, np.float64)), s.axis), s)
    total = part if total is None else total + part
  return total


def producers(params, group: graph.Group) -> list[str]:
  """The leaves that make the group's channels: kernels (ndim >= 2) sliced along their last axis, Flax's
  output features ('params/conv_3/kernel'). One for a conv's or Dense layer's own channels; several for a
  residual stream (every layer adding into it) or a depthwise convolution's (its input's producer and it).
  """
  leaves = dict(masks.named_leaves(params))
  return [s.leaf for s in group.slices if s.leaf in leaves and _is_output_filter(s, leaves[s.leaf])]


def bn_scale_penalty(params, groups: Sequence[graph.Group]):
  """sum |gamma| over the groups' BatchNorm scale slices that `params` holds: network slimming's L1 term.

  Differentiable and jit-safe: which entries it sums depends on the groups and the leaves' names and
  shapes, never on their values. `params` may be a subtree of what the groups were traced with ({'params':
  ...} of a linen model's variables).
  """
  leaves, total = dict(masks.named_leaves(params)), 0.0
  for g in groups:
    for s in g.slices:
      leaf = leaves.get(s.leaf)
      if leaf is not None and _is_bn_scale(s, leaf):
        positions = np.asarray([p for channel in s.index for p in channel], int)
        total = total + jnp.sum(jnp.abs(jnp.take(leaf, positions, axis=s.axis)))
  return total


def group_scores(params, groups: Sequence[graph.Group], criterion: str, grads=None) -> list[np.ndarray | None]:
  """One score per channel of each group (None: the group has nothing the criterion reads).

  Args:
    params: the pytree the groups were traced with (for Flax linen the variables dict).
    groups: groups from `graph.channel_groups`.
    criterion: one of CRITERIA (see the module docstring).
    grads: for "taylor" only: dL/dparams, a pytree with leaves of the same names (a subtree is enough:
      {'params': ...} of a linen model leaves the BatchNorm statistics out).

  Returns:
    A float64 array of length group.size, or None, per group.
  """
  if criterion not in CRITERIA:
    raise ValueError(f"criterion={criterion!r} is not a group criterion; allowed: {', '.join(CRITERIA)}")
  if (criterion == "taylor") != (grads is not None):
    raise ValueError(f"grads are needed by the 'taylor' criterion and only by it (criterion={criterion!r})")
  if criterion in ("l1", "l2"):
    power = 1 if criterion == "l1" else 2
    return [_summed(params, g, _is_kernel, lambda _, w: np.abs(w) ** power) for g in groups]
  if criterion == "l1_filter":
    return [_summed(params, g, _is_output_filter, lambda _, w: np.abs(w)) for g in groups]
  if criterion == "bn_scale":
    return [_summed(params, g, _is_bn_scale, lambda _, w: np.abs(w)) for g in groups]
  weights = dict(masks.named_leaves(params))
  products = [_summed(grads, g, lambda s, _: s.leaf in weights,
                      lambda name, dw: np.asarray(weights[name], np.float64) * dw) for g in groups]
  return [None if p is None else np.abs(p) for p in products]


def keep_largest(scores: np.ndarray, n_remove: int) -> np.ndarray:
  """Bool keep-array with the n_remove smallest scores off; ties go by position (stable sort)."""
  keep = np.ones(np.shape(scores), bool)
  keep[np.argsort(scores, kind="stable")[:n_remove]] = False
  return keep


def at_least_one(keep: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """keep, or if it keeps nothing, only the channel of highest score (the first on ties)."""
  if not keep.any():
    keep = keep.copy()
    keep[np.argmax(scores)] = True
  return keep


def select(scores: Sequence[np.ndarray | None], ratio: float, scope: str = "global") -> list[np.ndarray]:
  """Keep-arrays removing round(ratio * channels) of lowest score, globally or in each group.

  Args:
    scores: `group_scores`' result; a None entry is not ranked and stays None.
    ratio: the fraction of the scored channels to remove, in [0, 1].
    scope: "global" (one ranking over all scored groups) or "layerwise" (each group on its own).

  Returns:
    One bool array per scored group (True: kept), keeping at least one channel; None where scores is.
  """
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"ratio={ratio} is outside [0, 1]")
  if scope not in SCOPES:
    raise ValueError(f"scope={scope!r} is not a scope; allowed: {', '.join(SCOPES)}")
  scored = [s for s in scores if s is not None]
  if scope == "global" and scored:
    flat = np.concatenate(scored)
    chosen = np.split(keep_largest(flat, round(ratio * flat.size)), np.cumsum([s.size for s in scored])[:-1])
  else:
    chosen = [keep_largest(s, round(ratio * s.size)) for s in scored]
  chosen = iter(at_least_one(k, s) for k, s in zip(chosen, scored))
  return [None if s is None else next(chosen) for s in scores]


def channel_keep(params, groups: Sequence[graph.Group], ratio: float, criterion: str,
                 scope: str = "global", grads=None) -> list[np.ndarray]:
  """The channels of each group kept at `ratio` by `criterion` (a group it cannot score keeps all).

  Args:
    params: the pytree the groups were traced with.
    groups: groups from `graph.channel_groups`.
    ratio: the fraction of the scored channels to remove (see `select`).
    criterion: one of CRITERIA.
    scope: "global" or "layerwise" (see `select`).
    grads: dL/dparams for "taylor" (see `group_scores`), else None.

  Returns:
    One bool array of length group.size per group, for `graph.channel_mask` / `graph.shrink`.
  """
  scores = group_scores(params, groups, criterion, grads)
  return [np.ones(g.size, bool) if k is None else k for g, k in zip(groups, select(scores, ratio, scope))]


def channel_mask(params, groups: Sequence[graph.Group], ratio: float, criterion: str,
                 scope: str = "global", grads=None):
  """The 0/1 mask pytree (structure of params) removing `channel_keep`'s channels from every group member.

  Args:
    params: the pytree the groups were traced with.
    groups: groups from `graph.channel_groups`.
    ratio: the fraction of the scored channels to remove.
    criterion: one of CRITERIA.
    scope: "global" or "layerwise".
    grads: dL/dparams for "taylor", else None.

  Returns:
    `graph.channel_mask(params, groups, channel_keep(...))`.
  """
  return graph.channel_mask(params, groups, channel_keep(params, groups, ratio, criterion, scope, grads))
