"""Structured pruning: whole channels chosen by BatchNorm scale or filter norm, then a narrower model.

Network slimming (Liu et al. 2017) trains with an L1 penalty on the BatchNorm scales gamma
(`slimming_penalty`), then removes the channels of smallest |gamma| under one global threshold
(`channel_masks`). L1 filter pruning (Li et al. 2017) removes, conv by conv, the output filters of smallest
L1 norm (`l1_filter_masks`). Both return a channel mask {bn_name: bool keep-array}, keyed by the
BatchNorm's path ('bn_3', 'stage2_block1/bn1'); the conv it follows is the same path with 'bn' -> 'conv'.

A channel mask can be used two ways that compute the same function: `expand_channel_masks` turns it into
an ordinary parameter-mask pytree for the full-width network (the pruned channels output exactly 0: their
conv filter, BN scale and BN bias are zero, and the next layer ignores them), and `rebuild` copies the
kept channels into a physically narrower model (the models' `widths` / `block_widths` options).

Which channels may go (the coupling rule):
- VGG: every conv/BN pair; the last conv's channels feed the `output` Dense layer's rows.
- ResNet: only channels that stay inside a residual block -- bn1 of a basic block, bn1 and bn2 of a
  bottleneck. Block outputs, the stem and the shortcuts are summed together by the residual additions, so
  removing one of their channels would have to remove it from every layer of the stage; we never do.

No layer is ever left without channels: if the threshold would remove all of a layer's channels, the one
of largest score (first on ties) is kept, so a few fewer channels than asked may be removed.
"""

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np

from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity import group_criteria

KINDS = ("vgg", "resnet")
REBUILDABLE = ("resnet18", "resnet20", "resnet32", "resnet56", "vgg11", "vgg16")


def network_order(name: str):
  """Sort key putting 'bn_2' before 'bn_10' and blocks in network order."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def kind_of(model_kind: str) -> str:
  """'vgg' or 'resnet' for a kind or a model name of those families ('vgg16', 'resnet20')."""
  for kind in KINDS:
    if model_kind.startswith(kind):
      return kind
  raise ValueError(f"model_kind={model_kind!r} has no channel pruning; families: {', '.join(KINDS)}")


def _infer_kind(params) -> str:
  if "stem_bn" in params:
    return "resnet"
  if any(re.fullmatch(r"bn_\d+", k) for k in params):
    return "vgg"
  raise ValueError("channel pruning needs the params of a VGG (bn_i) or ResNet (stem_bn); these have neither")


def prunable_bns(params, model_kind=None) -> list[str]:
  """Paths of the BatchNorm layers whose channels may be removed (see the coupling rule), network order."""
  kind = kind_of(model_kind) if model_kind else _infer_kind(params)
  if kind == "vgg":
    names = [k for k in params if re.fullmatch(r"bn_\d+", k)]
  else:
    names = []
    for block in (k for k in params if re.fullmatch(r"stage\d+_block\d+", k)):
      inner = ("bn1", "bn2") if "bn3" in params[block] else ("bn1",)  # bottleneck or basic
      names += [f"{block}/{bn}" for bn in inner]
  if not names:
    raise ValueError(f"the params hold no prunable BatchNorm of a {kind} model; check model_kind")
  return sorted(names, key=network_order)


def _get(tree, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def conv_of(bn: str) -> str:
  """'stage1_block0/bn1' -> 'stage1_block0/conv1', 'bn_3' -> 'conv_3'."""
  parent, _, last = bn.rpartition("/")
  return "/".join(filter(None, [parent, last.replace("bn", "conv", 1)]))


def consumer_of(params, bn: str) -> str:
  """The layer reading bn's channels: the next conv in the block / stack, else VGG's `output` Dense."""
  parent, _, last = bn.rpartition("/")
  sep, i = re.fullmatch(r"bn(_?)(\d+)", last).groups()
  nxt = "/".join(filter(None, [parent, f"conv{sep}{int(i) + 1}"]))
  try:
    _get(params, nxt)
    return nxt
  except KeyError:
    if parent or "output" not in params:
      raise ValueError(f"no layer reads the channels of {bn}") from None
    return "output"


def _check_ratio(ratio):
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"ratio={ratio} is outside [0, 1]")


def bn_scales(params, model_kind=None) -> dict[str, np.ndarray]:
  """{bn_name: |gamma|} for the prunable BatchNorm layers, in network order."""
  return {bn: np.abs(np.asarray(_get(params, bn)["scale"])) for bn in prunable_bns(params, model_kind)}


def channel_masks(params, ratio: float, model_kind=None) -> dict[str, np.ndarray]:
  """Network slimming: remove round(ratio * total) channels of smallest |gamma| over all prunable layers.

  One global threshold, as Liu et al.'s percentile of all scales, but an exact count: ties in |gamma| go
  by position (network order, then channel index). Then at least one channel per layer is kept.
  """
  _check_ratio(ratio)
  scales = bn_scales(params, model_kind)
  flat = np.concatenate(list(scales.values()))
  keep = group_criteria.keep_largest(flat, round(ratio * flat.size))
  bounds = np.cumsum([s.size for s in scales.values()])[:-1]
  return {bn: group_criteria.at_least_one(k, s) for (bn, s), k in zip(scales.items(), np.split(keep, bounds))}


def l1_filter_masks(params, ratio: float, model_kind=None) -> dict[str, np.ndarray]:
  """Li et al. 2017: in each prunable conv remove round(ratio * filters) output filters of least L1 norm.

  Keyed, like channel_masks, by the BatchNorm after the conv; same coupling and at-least-one rules.
  """
  _check_ratio(ratio)
  out = {}
  for bn in prunable_bns(params, model_kind):
    kernel = np.asarray(_get(params, conv_of(bn))["kernel"])
    norms = np.abs(kernel).sum(axis=tuple(range(kernel.ndim - 1)))
    out[bn] = group_criteria.at_least_one(group_criteria.keep_largest(norms, round(ratio * norms.size)), norms)
  return out


def slimming_penalty(params, names=None):
  """sum |gamma| over the BatchNorm layers `names` (default: the prunable ones); add lambda * it to the loss.

  Differentiable and jit-safe: it reads only the dict keys of `params`, never their values, to choose.
  """
  names = prunable_bns(params) if names is None else names
  return sum(jnp.sum(jnp.abs(_get(params, bn)["scale"])) for bn in names)


def _check_keep(params, channel_keep):
  allowed = set(prunable_bns(params))
  for bn, keep in channel_keep.items():
    if bn not in allowed:
      raise ValueError(f"{bn} may not be channel-pruned (coupled through a residual addition, or absent)")
    if np.shape(keep) != _get(params, bn)["scale"].shape or not np.any(keep):
      raise ValueError(f"the keep-array of {bn} has shape {np.shape(keep)} or keeps no channel")


def _slots(params, bn):
  """(collection, leaf path, axis, groups) for every array indexed by bn's channels.

  `groups` > 1: the axis holds a flattened H x W x C feature map (channel fastest), as the Dense rows do.
  """
  conv, nxt = conv_of(bn), consumer_of(params, bn)
  slots = [("params", f"{conv}/kernel", -1, 1), ("params", f"{bn}/scale", 0, 1), ("params", f"{bn}/bias", 0, 1),
           ("batch_stats", f"{bn}/mean", 0, 1), ("batch_stats", f"{bn}/var", 0, 1)]
  kernel = _get(params, nxt)["kernel"]
  if kernel.ndim == 2:  # Dense: its rows are the flattened feature map
    slots.append(("params", f"{nxt}/kernel", 0, kernel.shape[0] // _get(params, bn)["scale"].shape[0]))
  else:
    slots.append(("params", f"{nxt}/kernel", -2, 1))
  return slots


def _along(x: np.ndarray, axis: int, groups: int, keep: np.ndarray, drop: bool) -> np.ndarray:
  """Drop (or zero) the channels that `keep` marks False along `axis`."""
  axis %= x.ndim
  shape = x.shape
  x = x.reshape(shape[:axis] + (groups, shape[axis] // groups) + shape[axis + 1:])  # channel axis: axis + 1
  if drop:
    x = np.compress(keep, x, axis=axis + 1)
  else:
    x = x * keep.reshape((-1,) + (1,) * (x.ndim - axis - 2)).astype(x.dtype)
  return x.reshape(shape[:axis] + (-1,) + shape[axis + 1:])


def expand_channel_masks(params, channel_keep) -> dict:
  """Parameter-mask pytree (structure of params, 0/1 of each leaf's dtype) equivalent to channel_keep.

  Zeroes each pruned channel's conv filter, BN scale and BN bias (so it outputs exactly 0, whatever its
  running statistics) and the next layer's input weights for it, so the masked full-width network computes
  what `rebuild`'s narrower one does and its non-zero counts (compression.flops) match the narrow model's.
  """
  _check_keep(params, channel_keep)
  flat = {k: np.ones(np.shape(v), np.asarray(v).dtype) for k, v in
          flax.traverse_util.flatten_dict(params, sep="/").items()}
  for bn, keep in channel_keep.items():
    for collection, path, axis, groups in _slots(params, bn):
      if collection == "params":
        flat[path] = _along(flat[path], axis, groups, np.asarray(keep, bool), drop=False)
  return jax.tree_util.tree_map_with_path(lambda p, _: jnp.asarray(flat[masks_lib.leaf_name(p)]), params)


def rebuild(model_name: str, model_kwargs: dict, variables: dict, channel_keep) -> tuple[dict, dict]:
  """(kwargs, variables) of the narrower model holding only the kept channels.

  Build it with models.get(model_name, num_classes=..., **kwargs). In eval mode (train=False) it computes
  what the full model masked with expand_channel_masks(variables['params'], channel_keep) does.
  """
  if model_name not in REBUILDABLE:
    raise ValueError(f"model_name={model_name!r} cannot be rebuilt narrower; "
                    f"allowed: {', '.join(REBUILDABLE)}")
  params = variables["params"]
  _check_keep(params, channel_keep)
  flat = {collection: {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}
          for collection, tree in variables.items()}
  for bn, keep in channel_keep.items():
    for collection, path, axis, groups in _slots(params, bn):
      if path in flat.get(collection, {}):
        flat[collection][path] = _along(flat[collection][path], axis, groups, np.asarray(keep, bool), drop=True)
  new_variables = {collection: flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(v) for k, v in tree.items()}, sep="/") for collection, tree in flat.items()}
  return {**model_kwargs, **_width_option(model_name, new_variables["params"])}, new_variables


def _width_option(model_name: str, params) -> dict:
  """The model option that gives every conv the output width its kernel has in `params`."""
  def width(conv):
    return int(_get(params, conv)["kernel"].shape[-1])
  if kind_of(model_name) == "vgg":
    convs = sorted((k for k in params if re.fullmatch(r"conv_\d+", k)), key=network_order)
    return {"widths": tuple(width(c) for c in convs)}
  blocks = sorted((k for k in params if re.fullmatch(r"stage\d+_block\d+", k)), key=network_order)
  inner = {b: ("conv1", "conv2") if "conv3" in params[b] else ("conv1",) for b in blocks}
  return {"block_widths": tuple(tuple(width(f"{b}/{c}") for c in inner[b]) for b in blocks)}
