"""The mask pytree: one array of 0s and 1s per parameter leaf, same structure and shapes as the params.

Leaves that may not be pruned (biases, BatchNorm scales, by choice the output layer) keep all-ones
masks; which leaves are prunable is a bool pytree of the same structure, from `prunable`. Functions
that count take that pytree; without it they fall back to the default rule (ndim >= 2).

The params may be any pytree: a linen params dict, or a Flax NNX model's state, `nnx.state(model,
nnx.Param)` (its Variables, which the masks then mirror) or `nnx.as_pure` of it (plain arrays). A leaf is
named by its path either way, "hidden/kernel": the `value` attribute an NNX Variable holds its array in is
not part of the name. The trees a function combines (params, masks, scores) must share one of these forms.
"""

import fnmatch
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def leaf_name(path) -> str:
  """'hidden_0/kernel' for a pytree key path such as (DictKey('hidden_0'), DictKey('kernel')), or the same
  path ending in an NNX Variable's GetAttrKey('value')."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path if not _variable_value(k))


def _variable_value(key) -> bool:
  """Whether `key` is the step from an NNX Variable (a pytree node) to the array it holds."""
  return isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value"


def named_leaves(tree) -> list[tuple[str, jax.Array]]:
  return [(leaf_name(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def prunable(params, exclude: Sequence[str] = ()):
  """Bool pytree: True for the kernels of Dense and Conv layers (ndim >= 2).

  `exclude` holds glob patterns over leaf names ('output/*', '*/bias'): matching leaves are kept.
  Excluding 'output/*' leaves the final layer dense, as OpenLTH's `pruning_layers_to_ignore` does.
  """
  def rule(path, leaf):
    name = leaf_name(path)
    return bool(np.ndim(leaf) >= 2 and not any(fnmatch.fnmatch(name, p) for p in exclude))
  return jax.tree_util.tree_map_with_path(rule, params)


def init(params):
  """All-ones mask for every leaf, same structure, shapes and dtypes as `params`."""
  return jax.tree.map(jnp.ones_like, params)


def apply(params, masks):
  return jax.tree.map(lambda p, m: p * m, params, masks)


def zero_pruned(tree, masks):
  """`tree` (params, gradients, updates) with exactly 0 where the mask is 0, whatever was there.

  `where`, not `* mask`: a NaN or inf at a pruned position (NaN * 0 is NaN) must not reach an optimizer's
  state or a weight. The one way masked training zeroes pruned positions (`keep_pruned`, the Trainer's step).
  """
  return jax.tree.map(lambda x, m: jnp.where(m != 0, x, jnp.zeros_like(x)), tree, masks)


def _default(masks, which):
  return prunable(masks) if which is None else which


def count(masks, which=None) -> tuple[int, int]:
  """(remaining, total) weights over the leaves `which` marks (default: the prunable rule)."""
  which = _default(masks, which)
  leaves = [(m, w) for m, w in zip(jax.tree.leaves(masks), jax.tree.leaves(which)) if w]
  remaining = sum(int(jnp.count_nonzero(m)) for m, _ in leaves)
  total = sum(int(m.size) for m, _ in leaves)
  return remaining, total


def sparsity(masks, which=None) -> float:
  """Fraction of prunable weights that are zero, in [0, 1]."""
  remaining, total = count(masks, which)
  return 1.0 - remaining / total if total else 0.0


def model_sparsity(masks) -> float:
  """Fraction of all parameters (biases and norms included) that are masked to zero."""
  all_leaves = jax.tree.map(lambda _: True, masks)
  return sparsity(masks, all_leaves)


def layer_report(masks, which=None) -> list[dict]:
  """Per prunable leaf: name, shape, total and remaining weights, sparsity."""
  which = _default(masks, which)
  rows = []
  for (name, m), w in zip(named_leaves(masks), jax.tree.leaves(which)):
    if w:
      remaining = int(jnp.count_nonzero(m))
      rows.append({"layer": name, "shape": list(m.shape), "total": int(m.size),
                   "remaining": remaining, "sparsity": 1.0 - remaining / m.size})
  return rows


def hamming(masks_a, masks_b, which=None) -> float:
  """Normalised Hamming distance: fraction of prunable positions where the two masks differ."""
  which = _default(masks_a, which)
  pairs = [(a, b) for a, b, w in zip(jax.tree.leaves(masks_a), jax.tree.leaves(masks_b),
                                     jax.tree.leaves(which)) if w]
  differ = sum(int(jnp.count_nonzero((a != 0) != (b != 0))) for a, b in pairs)
  total = sum(int(a.size) for a, _ in pairs)
  return differ / total if total else 0.0


def shuffle(key: jax.Array, masks, which=None):
  """Each leaf `which` marks with its entries randomly permuted: the same count per layer, new positions.

  The layer-wise shuffle control of "Pruning Neural Networks at Initialization: Why are We Missing
  the Mark?" (Frankle et al. 2021); other leaves are returned unchanged.
  """
  which = _default(masks, which)
  leaves, treedef = jax.tree.flatten(masks)
  keys = jax.random.split(key, len(leaves))
  out = [jax.random.permutation(k, m.ravel()).reshape(m.shape) if w else m
         for k, m, w in zip(keys, leaves, jax.tree.leaves(which))]
  return jax.tree.unflatten(treedef, out)


def layer_counts(masks, which=None) -> dict[str, dict]:
  """{leaf name: {"remaining": int, "total": int}} for each leaf `which` marks."""
  return {row["layer"]: {"remaining": row["remaining"], "total": row["total"]} for row in layer_report(masks, which)}
