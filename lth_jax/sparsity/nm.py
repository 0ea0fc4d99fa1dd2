"""N:M sparsity: in every group of m consecutive weights along a layer's input axis, n stay.

Conventions, stated once:
  * The input (reduction) axis of a prunable leaf is its second-to-last: Flax's Dense kernel is (in, out),
    its Conv kernel (*window, in, out). A group is m consecutive input channels at one window position
    and one output unit; the window is not flattened into the group. That is NVIDIA's 2:4 layout (apex's
    ASP views a PyTorch conv weight (out, in, h, w) as rows (h*w*out, in) and groups each row's `in`) and
    jaxpruner's `NByM(n, m, axis=-2)` (its top-k runs over m consecutive entries of the chosen axis).
  * m must divide every prunable leaf's input dimension; nothing is padded (ASP pads with zeros, jaxpruner
    leaves it undefined), so a layer that cannot hold the pattern is refused by name (`check_fits`).
  * Within a group the n highest scores stay; ties go as everywhere in `select`: the earlier position
    is removed first.

A pattern fixes the sparsity at 1 - n/m. `select.keep_counts` takes it as a floor (jaxpruner's
iterative N:M): every group first keeps its n best alive weights, the rest of a count goes to the best
of the others, so a schedule that ends at 1 - n/m ends with exactly n in every group of m.
"""

import dataclasses
import re

import jax.numpy as jnp

from lth_jax.errors import require

UNSTRUCTURED = "unstructured"
_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class NM:
  """n of every m consecutive weights along the input axis stay (1 <= n < m)."""
  n: int
  m: int

  def __post_init__(self):
    require(1 <= self.n < self.m, lambda: f"an N:M pattern needs 1 <= n < m; got {self.n}:{self.m}")

  @property
  def sparsity(self) -> float:
    """The fraction of weights the pattern removes: 1 - n/m."""
    return 1.0 - self.n / self.m

  def __str__(self) -> str:
    return f"{self.n}:{self.m}"


def parse(text: str) -> NM | None:
  """"unstructured" -> None; "2:4" -> NM(2, 4). ValueError for anything else (or n >= m, n = 0)."""
  if str(text).strip() == UNSTRUCTURED:
    return None
  match = _PATTERN.match(str(text))
  n, m = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
  require(1 <= n < m, lambda: f"{text!r} is not a pattern; allowed: {UNSTRUCTURED!r} or 'N:M' with "
          "1 <= N < M, e.g. '2:4'")
  return NM(n, m)


def input_axis(shape) -> int:
  """The axis groups run along: the second-to-last (a kernel's `in`)."""
  require(len(shape) >= 2, lambda: f"a leaf of shape {tuple(shape)} has no input axis (N:M needs ndim >= 2)")
  return len(shape) - 2


def misfit(shape, pattern: NM) -> str | None:
  """Why a leaf of `shape` cannot hold `pattern` (no input axis, or its input dimension is not a
  multiple of m), or None."""
  if len(shape) < 2:
    return f"a leaf of shape {tuple(shape)} has no input axis (ndim < 2)"
  axis = input_axis(shape)
  if shape[axis] % pattern.m:
    return f"its input dimension (axis {axis} of shape {tuple(shape)}) is {shape[axis]}, not a multiple of {pattern.m}"
  return None


def _grouped(x, m: int):
  """(..., in, out) -> (..., out, in/m, m): each group of m consecutive inputs on the last axis."""
  moved = jnp.moveaxis(x, -2, -1)
  return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))


def _ungrouped(g):
  """The inverse of `_grouped`."""
  return jnp.moveaxis(g.reshape(g.shape[:-2] + (-1,)), -1, -2)


def top_n_per_group(keys, pattern: NM):
  """Bool array shaped like `keys`: in every group of m along the input axis, the n largest keys.

  Ties: the later position stays (the earlier is removed first). Each entry counts the entries of its
  group that outrank it, an m x m comparison per group: no sort, cheap for the small m N:M uses.

  Args:
    keys: integer or float keys, ndim >= 2, the input dimension a multiple of pattern.m.
    pattern: the N:M pattern.
  Returns:
    The mask of the kept positions.
  """
  why = misfit(keys.shape, pattern)
  require(why is None, lambda: f"keys of shape {tuple(keys.shape)}: {why}")
  g = _grouped(keys, pattern.m)
  mine, other = g[..., :, None], g[..., None, :]
  position = jnp.arange(pattern.m)
  later = position[None, :] > position[:, None]          # [i, j]: j comes after i
  outranked = jnp.sum((other > mine) | ((other == mine) & later), axis=-1)
  return _ungrouped(outranked < pattern.n)
