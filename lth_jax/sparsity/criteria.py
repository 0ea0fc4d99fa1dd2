"""Pruning criteria by name: pure functions (params, masks, context) -> scores, higher = keep.

A criterion returns one score per weight, a pytree shaped like `params`; `select.prune_by_score`
turns scores into masks (exact counts, stable ties, cumulative), so a criterion never counts or
sorts. `context` carries what a criterion may need beyond the weights, each field optional: a
random `key`, (for data-driven criteria) a `batch`, a `loss_fn` and a `logits_fn`, the prunable
leaves `which` and GraSP's temperature. Scores are taken at the masked weights `params * masks`, so
a pruned weight scores 0 for the at-initialization criteria (snip, grasp, synflow), whose papers
score theta_0 itself.

BatchNorm while scoring: `loss_fn` and `logits_fn` run the network in whichever mode their maker
chose. Each criterion registers the mode its authors' code scores in (`batchnorm_mode`): SNIP and
GraSP in train mode (the scoring batch's own statistics), SynFlow in eval mode (Synaptic-Flow's
`prune_loop` default); lth_jax's command line builds the context in that mode unless
config.prune.score_batchnorm says otherwise. Register a new one with

    @criteria.register("double_magnitude")
    def double_magnitude(params, masks, context):
      return jax.tree.map(lambda w: 2 * jnp.abs(w), params)
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from lth_jax.sparsity import masks as masks_lib

_BATCHNORM: dict[str, str] = {}
BATCHNORM_MODES = ("train", "eval")
GRASP_TEMPERATURE = 200.0   # the T of GraSP's and Synaptic-Flow's code: logits / T while scoring


@dataclasses.dataclass(frozen=True)
class Context:
  """What a criterion may read besides params and masks."""
  key: jax.Array | None = None      # random criteria
  batch: Any = None                 # (x, y): data-driven criteria
  loss_fn: Callable | None = None   # (params, batch) -> scalar loss: SNIP
  logits_fn: Callable | None = None  # (params, x) -> logits: GraSP, SynFlow
  which: Any = None                 # bool pytree of the prunable leaves (None: masks.prunable's rule)
  grasp_temperature: float = GRASP_TEMPERATURE


Criterion = Callable[[Any, Any, Context], Any]
"""A criterion: `(params, masks, context) -> scores`, a pytree shaped like `params`, higher = keep."""
_REGISTRY: dict[str, Criterion] = {}


def register(name: str, batchnorm: str = "train"):
  """Decorator: make `fn(params, masks, context) -> scores` available as `name`.

  `batchnorm` is the BatchNorm mode the criterion's authors score in ("train": the scoring batch's
  statistics; "eval": the running ones), what `batchnorm_mode` answers.
  """
  if batchnorm not in BATCHNORM_MODES:
    raise ValueError(f"batchnorm={batchnorm!r}; allowed: {', '.join(BATCHNORM_MODES)}")

  def add(fn: Criterion) -> Criterion:
    if name in _REGISTRY:
      raise ValueError(f"criterion {name!r} is already registered")
    _REGISTRY[name] = fn
    _BATCHNORM[name] = batchnorm
    return fn
  return add


def names() -> tuple[str, ...]:
  """The registered criteria's names, in the order they were registered."""
  return tuple(_REGISTRY)


def batchnorm_mode(name: str) -> str:
  """"train" or "eval": the BatchNorm mode criterion `name`'s authors score in."""
  get(name)
  return _BATCHNORM[name]


def get(name: str) -> Criterion:
  """The criterion registered as `name`; ValueError listing the registered names when there is none."""
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


@register("snip", batchnorm="train")
def snip(params, masks, context: Context):
  """|g * w| with g the loss gradient on context.batch (Lee et al. 2019, SNIP).

  BatchNorm: SNIP's code scores in train mode (the batch's statistics), and so does lth_jax's command
  line unless config.prune.score_batchnorm says otherwise.
  """
  _needs(context, "snip", "batch", "loss_fn")
  masked = masks_lib.apply(params, masks)
  grads = jax.grad(context.loss_fn)(masked, context.batch)
  return jax.tree.map(lambda g, w: jnp.abs(g * w), grads, masked)


def _split(params, which):
  """(the prunable leaves, merge): merge(new, other=identity) puts `new` in their place and
  other(leaf) in place of every other leaf, as a pytree like params."""
  leaves, treedef = jax.tree.flatten(params)
  flags = jax.tree.leaves(masks_lib.prunable(params) if which is None else which)

  def merge(weights, other=lambda p: p):
    it = iter(weights)
    return jax.tree.unflatten(treedef, [next(it) if f else other(p) for p, f in zip(leaves, flags)])
  return [p for p, f in zip(leaves, flags) if f], merge


def hessian_gradient(loss_fn, params, batch, which=None):
  """H g over the prunable leaves: g the loss gradient with respect to the weights `which` marks
  (default: masks.prunable's rule), H the Hessian with respect to them, every other leaf (biases,
  BatchNorm scales) held fixed, as GraSP's code differentiates only the weights it prunes. H g by
  forward-mode differentiation of the gradient; 0 at the leaves held fixed.
  """
  weights, merge = _split(params, which)
  grad_fn = jax.grad(lambda w: loss_fn(merge(w), batch))
  g = jax.lax.stop_gradient(grad_fn(weights))
  return merge(jax.jvp(grad_fn, (weights,), (g,))[1], jnp.zeros_like)


@register("grasp", batchnorm="train")
def grasp(params, masks, context: Context):
  """w * (H g) (Wang et al. 2020, GraSP), as GraSP's and Synaptic-Flow's code compute it.

  The loss is the cross-entropy of logits / context.grasp_temperature (their T = 200), and g and H
  are taken over the prunable weights (`context.which`) only, biases held fixed. The paper scores
  -w * (H g) and removes the highest scores; keeping the highest of w * (H g) removes the same
  weights under this registry's higher-is-kept convention. BatchNorm: GraSP's code scores in train
  mode (the batch's statistics), and so does lth_jax's command line unless
  config.prune.score_batchnorm says otherwise.
  """
  _needs(context, "grasp", "batch", "logits_fn")
  if not context.grasp_temperature > 0:
    raise ValueError(f"context.grasp_temperature={context.grasp_temperature} must be > 0")

  def tempered_loss(p, batch):
    x, y = batch
    logits = context.logits_fn(p, x) / context.grasp_temperature
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
  masked = masks_lib.apply(params, masks)
  return jax.tree.map(lambda w, hg: w * hg, masked,
                      hessian_gradient(tempered_loss, masked, context.batch, context.which))


@register("synflow", batchnorm="eval")
def synflow(params, masks, context: Context):
  """|w| * |dR/dw|, R the summed output for an all-ones input through |w| (Tanaka et al. 2020).

  BatchNorm: Synaptic-Flow's `prune_loop` scores in eval mode by default (train_mode=False), and so
  does lth_jax's command line unless config.prune.score_batchnorm says otherwise (in train mode the
  statistics would be those of the single all-ones input).

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
