"""Per-layer sparsity distributions: how many weights each prunable layer keeps for an overall target.

Kinds:
  * "global": one threshold over all prunable weights; no per-layer counts (`None`).
  * "uniform": every prunable layer keeps the same fraction.
  * "uniform_first_dense": RigL's uniform (Evci et al. 2020; rigl's `get_sparsities_uniform` over the
    masks its scripts make): the network's first layer stays dense and unmasked, every other prunable
    layer keeps the same fraction, the target counted over those. The first layer is not prunable:
    the caller leaves it out of the prunable leaves (`first_layer` names it; lth_jax.experiment does
    so for config.prune.distribution="uniform_first_dense"), and the counts are "uniform"'s.
  * "erk": Erdős–Rényi-Kernel (Evci et al. 2020, RigL's `get_sparsities_erdos_renyi`): the density of a
    layer is eps * sum(shape) / prod(shape), eps chosen so the kept weights add up to the target; a
    layer whose density would exceed 1 is kept dense and eps is solved again for the rest.
  * "map": each layer's sparsity from {glob pattern: sparsity} (the first match); other layers take the
    overall target.

Counts are exact: "uniform" and "erk" keep exactly `keep` weights in all, the real-valued per-layer
counts rounded by largest remainder (ties: the earlier layer), so a layer differs from its real count
by less than one weight. "map" rounds each layer on its own (Python's rounding).
"""

import fnmatch
import math
from collections.abc import Mapping

import jax
import numpy as np

from lth_jax.sparsity import masks as masks_lib

KINDS = ("global", "uniform", "uniform_first_dense", "erk", "map")


def parse_pattern_map(entries, value_name: str, upper: float | None = None) -> dict[str, float]:
  """("output/*=0.5",) -> {"output/*": 0.5}; every value >= 0 (and <= `upper` when given).

  ValueError naming the first entry that does not read 'PATTERN=VALUE' in range.
  """
  out = {}
  bounds = f" with {value_name} in [0, {upper:g}]" if upper is not None else ""
  for entry in entries:
    pattern, _, value = str(entry).rpartition("=")
    try:
      out[pattern] = float(value)
    except ValueError:
      pattern = ""
    value = out.get(pattern, -1.0)
    if not (bool(pattern) and value >= 0 and (upper is None or value <= upper)):
      raise ValueError(f"entry {entry!r} must read 'PATTERN={value_name}'{bounds}, e.g. 'output/*=0.5'")
  return out


def parse_map(entries) -> dict[str, float]:
  """Per-layer sparsities: ("output/*=0.5",) -> {"output/*": 0.5}."""
  return parse_pattern_map(entries, "SPARSITY", upper=1.0)


def erk_densities(shapes, density: float) -> list[float]:
  """Per-layer densities whose weighted mean is `density`; layers that would exceed 1 are set to 1."""
  sizes = [math.prod(s) for s in shapes]
  raw = [sum(s) / n for s, n in zip(shapes, sizes)]
  dense: set[int] = set()
  while True:
    rest = [i for i in range(len(shapes)) if i not in dense]
    target = density * sum(sizes) - sum(sizes[i] for i in dense)
    eps = target / sum(raw[i] * sizes[i] for i in rest) if rest else 0.0
    over = [i for i in rest if eps * raw[i] > 1.0]
    if not over:
      return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
    top = max(raw[i] for i in over)   # RigL: the layers of the largest raw density go dense first
    dense.update(i for i in over if raw[i] == top)


def apportion(real_counts, keep: int, sizes) -> list[int]:
  """Integers within [0, size] summing to `keep`: floors, plus one for the largest remainders."""
  floors = [min(int(math.floor(c)), n) for c, n in zip(real_counts, sizes)]
  short = keep - sum(floors)
  remainders = np.array([c - f for c, f in zip(real_counts, floors)])
  for i in np.argsort(-remainders, kind="stable")[:max(short, 0)]:
    floors[i] += 1
  return floors


def first_layer(params, which) -> str:
  """The name ('stem_conv/kernel') of the network's first prunable layer: the first leaf `which` marks
  in the order the params were created, which for Flax modules is the order of the calls from the
  input (a pytree's own leaf order sorts the names: 'output' before 'stem_conv')."""
  marked = {masks_lib.leaf_name(path) for path, w in jax.tree_util.tree_leaves_with_path(which) if w}

  def in_creation_order(tree, prefix):
    if isinstance(tree, Mapping):
      for key, sub in tree.items():
        yield from in_creation_order(sub, prefix + (str(key),))
    else:
      yield "/".join(prefix)
  first = next((name for name in in_creation_order(params, ()) if name in marked), None)
  if first is None:
    raise ValueError("first_layer: `which` marks no leaf of `params`")
  return first


def layer_counts(kind: str, shapes, names, keep: int, layer_map=None):
  """Weights each prunable layer (shapes, names in order) keeps when `keep` of them stay in all.

  None for "global" (one threshold: the caller keeps the `keep` best scores overall).
  """
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r} is not a distribution; allowed: {', '.join(KINDS)}")
  sizes = [math.prod(s) for s in shapes]
  total = sum(sizes)
  if kind == "global":
    return None
  if kind == "map":
    target = 1.0 - keep / total
    def sparsity_of(name):
      return next((s for p, s in (layer_map or {}).items() if fnmatch.fnmatch(name, p)), target)
    return [round((1.0 - sparsity_of(name)) * n) for name, n in zip(names, sizes)]
  density = keep / total
  densities = erk_densities(shapes, density) if kind == "erk" else [density] * len(shapes)
  return apportion([d * n for d, n in zip(densities, sizes)], keep, sizes)
