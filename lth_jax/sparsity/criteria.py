"""Pruning criteria by name: pure functions (params, masks, context) -> scores, higher = keep.

A criterion returns one score per weight, a pytree shaped like `params`; `select.prune_by_score`
turns scores into masks (exact counts, stable ties, cumulative), so a criterion never counts or
sorts. `context` carries what a criterion may need beyond the weights, each field optional: a
random `key`, (for data-driven criteria) a `batch` and a `loss_fn`, and (for SynFlow) a `logits_fn`.
Scores are taken at the masked weights `params * masks`, so a pruned weight scores 0 for the
at-initialization criteria (snip, grasp, synflow), whose papers score theta_0 itself.
Register a new one with

    @criteria.register("double_magnitude")
    def double_magnitude(params, masks, context):
      return jax.tree.map(lambda w: 2 * jnp.abs(w), params)
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lth_jax.sparsity import masks as masks_lib

Criterion = Callable[[Any, Any, "Context"], Any]
_REGISTRY: dict[str, Criterion] = {}


@dataclasses.dataclass(frozen=True)
class Context:
  """What a criterion may read besides params and masks."""
  key: jax.Array | None = None      # random criteria
  batch: Any = None                 # (x, y): data-driven criteria
  loss_fn: Callable | None = None   # (params, batch) -> scalar loss
  logits_fn: Callable | None = None  # (params, x) -> logits, BatchNorm in eval mode: SynFlow


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
    raise ValueError(f"criterion {name!r} is not registered; allowed: {', '.join(_REGISTRY)}")
  return _REGISTRY[name]


def inverted(criterion: Criterion) -> Criterion:
  """The opposite ranking: the lowest-scoring weights are kept (the `invert` control).

  A NaN score stays NaN (of the other sign), which `select` treats alike: refused when given as arrays,
  ranked lowest when traced, whichever its sign.
  """
  return lambda params, masks, context: jax.tree.map(jnp.negative, criterion(params, masks, context))


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


def _needs(context: Context, name: str, *fields: str) -> None:
  missing = [f for f in fields if getattr(context, f) is None]
  if missing:
    raise ValueError(f"the {name} criterion needs context.{' and context.'.join(missing)}")


@register("snip")
def snip(params, masks, context: Context):
  """|g * w| with g the loss gradient on context.batch (Lee et al. 2019, SNIP)."""
  _needs(context, "snip", "batch", "loss_fn")
  masked = masks_lib.apply(params, masks)
  grads = jax.grad(context.loss_fn)(masked, context.batch)
  return jax.tree.map(lambda g, w: jnp.abs(g * w), grads, masked)


def hessian_gradient(loss_fn, params, batch):
  """H g: the Hessian of the loss times its gradient, by forward-mode differentiation of the gradient."""
  grad_fn = jax.grad(loss_fn)
  g = jax.lax.stop_gradient(grad_fn(params, batch))
  return jax.jvp(lambda p: grad_fn(p, batch), (params,), (g,))[1]


@register("grasp")
def grasp(params, masks, context: Context):
  """w * (H g) (Wang et al. 2020, GraSP).

  The paper scores -w * (H g) and removes the highest scores; keeping the highest of w * (H g)
  removes the same weights under this registry's higher-is-kept convention.
  """
  _needs(context, "grasp", "batch", "loss_fn")
  masked = masks_lib.apply(params, masks)
  return jax.tree.map(lambda w, hg: w * hg, masked, hessian_gradient(context.loss_fn, masked, context.batch))


@register("synflow")
def synflow(params, masks, context: Context):
  """|w| * |dR/dw|, R the summed output for an all-ones input through |w| (Tanaka et al. 2020).

  Data-free: only the input shape is read from context.batch. One call scores once; SynFlow's
  iterative schedule is `pruning.prune_iteratively`, or `pruning.prune_distributed` under a per-layer
  distribution (config.prune.synflow_iterations).
  """
  _needs(context, "synflow", "batch", "logits_fn")
  positive = jax.tree.map(jnp.abs, masks_lib.apply(params, masks))
  x = jax.tree.map(lambda a: jnp.ones((1,) + a.shape[1:], jnp.float32), context.batch)[0]
  # float64 would be the paper's guard against overflow in deep nets; float32 suffices at our depths
  grads = jax.grad(lambda p: jnp.sum(context.logits_fn(p, x)))(positive)
  return jax.tree.map(lambda g, w: jnp.abs(g * w), grads, positive)
