"""Pruning criteria by name: pure functions (params, masks, context) -> scores, higher = keep.

A criterion returns one score per weight, a pytree shaped like `params`; `select.prune_by_score`
turns scores into masks (exact counts, stable ties, cumulative), so a criterion never counts or
sorts. `context` carries what a criterion may need beyond the weights, each field optional: a
random `key`, and (for data-driven criteria) a `batch` and a `loss_fn`. Register a new one with

    @criteria.register("double_magnitude")
    def double_magnitude(params, masks, context):
      return jax.tree.map(lambda w: 2 * jnp.abs(w), params)
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lth_jax.errors import UserError

Criterion = Callable[[Any, Any, "Context"], Any]
_REGISTRY: dict[str, Criterion] = {}


@dataclasses.dataclass(frozen=True)
class Context:
  """What a criterion may read besides params and masks."""
  key: jax.Array | None = None      # random criteria
  batch: Any = None                 # (x, y): data-driven criteria
  loss_fn: Callable | None = None   # (params, batch) -> scalar loss


def register(name: str):
  """Decorator: make `fn(params, masks, context) -> scores` available as `name`."""
  def add(fn: Criterion) -> Criterion:
    if name in _REGISTRY:
      raise ValueError(f"criterion {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn
  return add


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str) -> Criterion:
  if name not in _REGISTRY:
    raise UserError(f"config.prune.criterion={name!r} is not a criterion; allowed: {', '.join(_REGISTRY)}")
  return _REGISTRY[name]


@register("magnitude")
def magnitude(params, masks, context: Context):
  """|w| (torch's L1Unstructured)."""
  del masks, context
  return jax.tree.map(jnp.abs, params)


@register("random")
def random(params, masks, context: Context):
  """Uniform scores: a random selection of the remaining weights."""
  del params
  if context.key is None:
    raise ValueError("the random criterion needs context.key")
  leaves, treedef = jax.tree.flatten(masks)
  keys = jax.random.split(context.key, len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.uniform(k, m.shape) for k, m in zip(keys, leaves)])
