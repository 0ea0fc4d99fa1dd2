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
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
"""A nested structure of arrays in `jax.tree`'s sense, such as Flax's params: masks are pytrees shaped like them."""


def leaf_name(path: tuple) -> str:
  """The name masks use for a leaf: its key path joined by "/".

  Args:
    path: a pytree key path such as (DictKey('hidden_0'), DictKey('kernel')), or the same path ending in an
      NNX Variable's GetAttrKey('value'), which the name leaves out.

  Returns:
    'hidden_0/kernel'.
  """
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path if not _variable_value(k))


def _variable_value(key) -> bool:
  """Whether `key` is the step from an NNX Variable (a pytree node) to the array it holds."""
  return isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value"


def named_leaves(tree: PyTree) -> list[tuple[str, jax.Array]]:
  """The leaves of `tree` with their names (`leaf_name`), in `jax.tree.leaves` order.

  Args:
    tree: any pytree (params, masks, scores).

  Returns:
    [(name, leaf), ...].
  """
  return [(leaf_name(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def prunable(params: PyTree, exclude: Sequence[str] = ()) -> PyTree:
  """Which leaves may be pruned: the kernels of Dense and Conv layers (ndim >= 2).

  Args:
    params: the parameters (or masks: only the shapes are read).
    exclude: glob patterns over leaf names ('output/*', '*/bias'): matching leaves are kept.
      Excluding 'output/*' leaves the final layer dense, as OpenLTH's `pruning_layers_to_ignore` does.

  Returns:
    A bool pytree shaped like `params`, one bool per leaf.
  """
  def rule(path, leaf):
    name = leaf_name(path)
    return bool(np.ndim(leaf) >= 2 and not any(fnmatch.fnmatch(name, p) for p in exclude))
  return jax.tree_util.tree_map_with_path(rule, params)


def init(params: PyTree) -> PyTree:
  """The dense masks: nothing pruned.

  Args:
    params: the parameters.

  Returns:
    All-ones masks, same structure, shapes and dtypes as `params`.
  """
  return jax.tree.map(jnp.ones_like, params)


def apply(params: PyTree, masks: PyTree) -> PyTree:
  """The masked parameters.

  Args:
    params: the parameters.
    masks: masks shaped like `params`.

  Returns:
    `params * masks`, leaf by leaf (`zero_pruned` when pruned positions may hold NaN or inf).
  """
  return jax.tree.map(lambda p, m: p * m, params, masks)


def zero_pruned(tree: PyTree, masks: PyTree) -> PyTree:
  """`tree` with exactly 0 where the mask is 0, whatever was there.

  `where`, not `* mask`: a NaN or inf at a pruned position (NaN * 0 is NaN) must not reach an optimizer's
  state or a weight. The one way masked training zeroes pruned positions (`keep_pruned`, the Trainer's step).

  Args:
    tree: params, gradients or updates, shaped like `masks`.
    masks: the masks.

  Returns:
    `tree` with its pruned positions set to 0.
  """
  return jax.tree.map(lambda x, m: jnp.where(m != 0, x, jnp.zeros_like(x)), tree, masks)


def _default(masks, which):
  return prunable(masks) if which is None else which


def count(masks: PyTree, which: PyTree | None = None) -> tuple[int, int]:
  """How many prunable weights remain.

  Args:
    masks: the masks.
    which: bool pytree of the leaves counted (default: `prunable`'s rule).

  Returns:
    (remaining, total) weights over the leaves `which` marks.
  """
  which = _default(masks, which)
  leaves = [(m, w) for m, w in zip(jax.tree.leaves(masks), jax.tree.leaves(which)) if w]
  remaining = sum(int(jnp.count_nonzero(m)) for m, _ in leaves)
  total = sum(int(m.size) for m, _ in leaves)
  return remaining, total


def sparsity(masks: PyTree, which: PyTree | None = None) -> float:
  """The fraction of prunable weights that are pruned.

  Args:
    masks: the masks.
    which: bool pytree of the leaves counted (default: `prunable`'s rule).

  Returns:
    A number in [0, 1]; 0 when no leaf is counted.
  """
  remaining, total = count(masks, which)
  return 1.0 - remaining / total if total else 0.0


def model_sparsity(masks: PyTree) -> float:
  """The fraction of all parameters (biases and norms included) that are pruned.

  Args:
    masks: the masks.

  Returns:
    A number in [0, 1].
  """
  all_leaves = jax.tree.map(lambda _: True, masks)
  return sparsity(masks, all_leaves)


def layer_report(masks: PyTree, which: PyTree | None = None) -> list[dict]:
  """One row per prunable leaf.

  Args:
    masks: the masks.
    which: bool pytree of the leaves reported (default: `prunable`'s rule).

  Returns:
    [{"layer": name, "shape": [...], "total": int, "remaining": int, "sparsity": float}, ...].
  """
  which = _default(masks, which)
  rows = []
  for (name, m), w in zip(named_leaves(masks), jax.tree.leaves(which)):
    if w:
      remaining = int(jnp.count_nonzero(m))
      rows.append({"layer": name, "shape": list(m.shape), "total": int(m.size),
                   "remaining": remaining, "sparsity": 1.0 - remaining / m.size})
  return rows


def hamming(masks_a: PyTree, masks_b: PyTree, which: PyTree | None = None) -> float:
  """The normalised Hamming distance between two masks.

  Args:
    masks_a: masks.
    masks_b: masks of the same structure.
    which: bool pytree of the leaves compared (default: `prunable`'s rule).

  Returns:
    The fraction of prunable positions where the two masks differ, in [0, 1].
  """
  which = _default(masks_a, which)
  pairs = [(a, b) for a, b, w in zip(jax.tree.leaves(masks_a), jax.tree.leaves(masks_b),
                                     jax.tree.leaves(which)) if w]
  differ = sum(int(jnp.count_nonzero((a != 0) != (b != 0))) for a, b in pairs)
  total = sum(int(a.size) for a, _ in pairs)
  return differ / total if total else 0.0


def shuffle(key: jax.Array, masks: PyTree, which: PyTree | None = None) -> PyTree:
  """The masks with each prunable leaf's entries randomly permuted: the same count per layer, new positions.

  The layer-wise shuffle control of "Pruning Neural Networks at Initialization: Why are We Missing
  the Mark?" (Frankle et al. 2021).

  Args:
    key: the PRNG key of the permutations.
    masks: the masks.
    which: bool pytree of the leaves shuffled (default: `prunable`'s rule); other leaves are returned
      unchanged.

  Returns:
    The shuffled masks.
  """
  which = _default(masks, which)
  leaves, treedef = jax.tree.flatten(masks)
  keys = jax.random.split(key, len(leaves))
  out = [jax.random.permutation(k, m.ravel()).reshape(m.shape) if w else m
         for k, m, w in zip(keys, leaves, jax.tree.leaves(which))]
  return jax.tree.unflatten(treedef, out)


def layer_counts(masks: PyTree, which: PyTree | None = None) -> dict[str, dict]:
  """Remaining and total weights per leaf.

  Args:
    masks: the masks.
    which: bool pytree of the leaves counted (default: `prunable`'s rule).

  Returns:
    {leaf name: {"remaining": int, "total": int}} for each leaf `which` marks.
  """
  return {row["layer"]: {"remaining": row["remaining"], "total": row["total"]} for row in layer_report(masks, which)}
