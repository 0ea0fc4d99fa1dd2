"""ResNets: the CIFAR ResNets of He et al. 2016, the CIFAR ResNet-18, and torchvision's ImageNet ResNet-50.

The CIFAR models start with a 3x3 stride-1 conv (no max-pool); the ImageNet model with torchvision's stem,
a 7x7 stride-2 conv and a 3x3 stride-2 max-pool (`stem="imagenet"`). All halve the resolution at the first
block of every stage after the first, and end with global average pooling and the `output` Dense layer.

- `resnet20/32/56`: 3 stages of n basic blocks at width, 2*width, 4*width (width 16), n = (depth-2)/6;
  ResNet-20 has 272,474 parameters. With `bottleneck=True` the blocks are bottlenecks (1x1 reduce, 3x3,
  1x1 expand by 4, so stage outputs are 4x wider) and n = (depth-2)/9, as in He et al.'s CIFAR bottleneck
  ResNets (ResNet-164 is n=18); depth 20 gives 2 blocks per stage, depth 32 is not allowed.
- `resnet18`: kuangliu/pytorch-cifar's ResNet-18, 4 stages of 2 basic blocks at 64/128/256/512,
  11,173,962 parameters.
- `imagenet_resnet50`: torchvision's ResNet-50 (v1.5: the stride on the bottleneck's 3x3 conv, as in Flax's
  ImageNet example and OpenLTH's `imagenet_resnet_50`), 4 stages of [3, 4, 6, 3] bottleneck blocks at
  64/128/256/512 (outputs 4x wider), 25,557,032 parameters for 1000 classes; `width` scales every stage
  (OpenLTH's `imagenet_resnet_50_W`). `imagenet_resnet18`: torchvision's ResNet-18, [2, 2, 2, 2] basic
  blocks, 11,689,512 parameters.

Where a block changes shape the shortcut is a 1x1 conv + BatchNorm (He et al.'s option B), as in OpenLTH,
kuangliu/pytorch-cifar and the Flax ImageNet example, rather than the paper's zero-padding option A for
CIFAR (which would make ResNet-20 269,722 parameters). Pruning masks cover the shortcut kernels too.

Every convolution pads k//2 on every side (`padding=1` for 3x3, 0 for 1x1), as the PyTorch ResNets of
the seeds, OpenLTH and kuangliu/pytorch-cifar do. Flax's 'SAME' would pad a stride-2 3x3 conv by 0 on
top/left and 1 on bottom/right, centring its windows one pixel off the stride-2 shortcut's. (At stride 1
the two agree; the VGG and Conv-2/4/6 models only use stride-1 3x3 convs, so their 'SAME' is the papers'.)

Names: blocks are `stage{s}_block{b}` (s from 1, b from 0), holding `conv1`, `bn1`, `conv2`, `bn2`
(`conv3`, `bn3`) and `shortcut_conv`, `shortcut_bn`; the stem is `stem_conv`, `stem_bn`. Every BatchNorm
is named after the conv it follows with 'conv' replaced by 'bn'.

`block_widths` (config.model.block_widths) sets the widths inside each block: one entry per block in
network order (stage by stage), each the widths of the convs whose outputs stay inside the block --
(conv1,) for a basic block, (conv1, conv2) for a bottleneck; a basic block's entry may be a bare int.
Block outputs, shortcuts and the stem keep the stage widths, since residual additions tie their
channels together. Absent, every block is at its stage width.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from lth_jax.errors import UserError
from lth_jax.models import cpu_conv
from lth_jax.models.registry import register

ModuleDef = Any

# He et al. 2016 initialize as He et al. 2015; torchvision's ResNet takes the normal, fan_out form.
# Dense and BatchNorm keep Flax's defaults. BN starts at scale 1, bias 0 -- torchvision's ResNet init (with
# its default zero_init_residual=False) -- not the zero-init of the Flax ImageNet example, which none of
# the references use and which would start channel-pruning scores at zero.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel_size: Sequence[int], strides: int = 1, name: Optional[str] = None) -> nn.Conv:
  """A bias-free conv padded k//2 on both sides of each axis (PyTorch's padding=k//2)."""
  return nn.Conv(features, kernel_size, strides, padding=[(k // 2, k // 2) for k in kernel_size],
                 use_bias=False, kernel_init=conv_init, name=name, conv_general_dilated=cpu_conv.conv_general_dilated)


class BasicBlock(nn.Module):
  """Two 3x3 convs; the first carries the stride. `inner`: (conv1 width,), default (filters,)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  inner: Optional[Sequence[int]] = None

  @nn.compact
  def __call__(self, x):
    (w1,) = self.inner or (self.filters,)
    y = nn.relu(self.norm(name="bn1")(self.conv(w1, (3, 3), self.strides, name="conv1")(x)))
    y = self.norm(name="bn2")(self.conv(self.filters, (3, 3), name="conv2")(y))
    return nn.relu(y + shortcut(x, y, self.conv, self.norm, self.strides))


class BottleneckBlock(nn.Module):
  """1x1 reduce to `filters`, 3x3 (carries the stride, as torchvision and Flax do), 1x1 expand by 4.

  `inner`: (conv1 width, conv2 width), default (filters, filters); the expansion stays 4 * filters.
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  inner: Optional[Sequence[int]] = None

  @nn.compact
  def __call__(self, x):
    w1, w2 = self.inner or (self.filters, self.filters)
    y = nn.relu(self.norm(name="bn1")(self.conv(w1, (1, 1), name="conv1")(x)))
    y = nn.relu(self.norm(name="bn2")(self.conv(w2, (3, 3), self.strides, name="conv2")(y)))
    y = self.norm(name="bn3")(self.conv(4 * self.filters, (1, 1), name="conv3")(y))
    return nn.relu(y + shortcut(x, y, self.conv, self.norm, self.strides))


def shortcut(x, y, conv, norm, strides):
  """Identity, or a 1x1 conv + BN projection when the block changes resolution or width."""
  if x.shape == y.shape:
    return x
  return norm(name="shortcut_bn")(conv(y.shape[-1], (1, 1), strides, name="shortcut_conv")(x))


class ResNet(nn.Module):
  """Stem, then stage s (from 0) of `stage_sizes[s]` blocks at `width * 2**s` filters.

  `stem`: "cifar" (3x3 conv, stride 1) or "imagenet" (torchvision's 7x7 stride-2 conv, BN, ReLU, then a
  3x3 stride-2 max-pool padded by 1: a 224x224 input reaches the first stage at 56x56).
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  width: int
  block_widths: Optional[Sequence[Sequence[int]]] = None  # per block, see the module docstring
  stem: str = "cifar"

  @nn.compact
  def __call__(self, x, train: bool = False):
    # PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (the weight on the old running average).
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
    kernel, strides = ((7, 7), 2) if self.stem == "imagenet" else ((3, 3), 1)
    x = nn.relu(norm(name="stem_bn")(conv(self.width, kernel, strides, name="stem_conv")(x)))
    if self.stem == "imagenet":   # Flax pads a max-pool with -inf, as PyTorch's MaxPool2d(3, 2, padding=1)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    k = 0  # block index over all stages, into block_widths
    for s, size in enumerate(self.stage_sizes):
      for b in range(size):
        strides = 2 if s > 0 and b == 0 else 1
        inner = self.block_widths[k] if self.block_widths is not None else None
        x = self.block_cls(self.width * 2**s, conv, norm, strides, inner, name=f"stage{s + 1}_block{b}")(x)
        k += 1
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="output")(x)


def check_width(width) -> int:
  """The first stage's filters: a positive int, or a UserError."""
  if isinstance(width, bool) or not isinstance(width, int) or width < 1:
    raise UserError(f"config.model.width={width!r} must be an integer >= 1 (the first stage's filters)")
  return width


def check_block_widths(block_widths, n_blocks: int, bottleneck: bool):
  """block_widths as a tuple of tuples (hashable, as module fields must be), or a UserError."""
  if block_widths is None:
    return None
  per_block = 2 if bottleneck else 1
  entries = tuple((w,) if isinstance(w, int) else tuple(w) for w in block_widths)
  if len(entries) != n_blocks or not all(
      len(e) == per_block and all(isinstance(w, int) and w > 0 for w in e) for e in entries):
    raise UserError(f"config.model.block_widths needs {n_blocks} entries (one per block) of {per_block} "
                    f"positive width{'s' if per_block > 1 else ''} each, got {block_widths!r}")
  return entries


def cifar_resnet(depth: int, num_classes: int, width: int, bottleneck: bool, block_widths=None) -> ResNet:
  """He et al.'s CIFAR ResNet: 3 stages of (depth-2)/6 basic or (depth-2)/9 bottleneck blocks."""
  layers_per_block = 3 if bottleneck else 2
  n, rest = divmod(depth - 2, 3 * layers_per_block)
  if rest or n < 1:
    raise UserError(f"config.model.bottleneck={bottleneck} needs a depth of the form "
                    f"{3 * layers_per_block}n+2, and ResNet-{depth} is not; resnet20 and resnet56 are")
  return ResNet((n,) * 3, BottleneckBlock if bottleneck else BasicBlock, num_classes, check_width(width),
                check_block_widths(block_widths, 3 * n, bottleneck))


@register("resnet20")
def resnet20(num_classes: int, width: int = 16, bottleneck: bool = False, block_widths=None):
  return cifar_resnet(20, num_classes, width, bottleneck, block_widths)


@register("resnet32")
def resnet32(num_classes: int, width: int = 16, bottleneck: bool = False, block_widths=None):
  return cifar_resnet(32, num_classes, width, bottleneck, block_widths)


@register("resnet56")
def resnet56(num_classes: int, width: int = 16, bottleneck: bool = False, block_widths=None):
  return cifar_resnet(56, num_classes, width, bottleneck, block_widths)


@register("resnet18")
def resnet18(num_classes: int, width: int = 64, block_widths=None):
  """kuangliu/pytorch-cifar's ResNet-18 (width 64: 11,173,962 parameters for 10 classes)."""
  return ResNet((2, 2, 2, 2), BasicBlock, num_classes, check_width(width), check_block_widths(block_widths, 8, False))


@register("imagenet_resnet18")
def imagenet_resnet18(num_classes: int, width: int = 64, block_widths=None):
  """torchvision's ResNet-18 (width 64: 11,689,512 parameters for 1000 classes)."""
  return ResNet((2, 2, 2, 2), BasicBlock, num_classes, check_width(width), check_block_widths(block_widths, 8, False),
                stem="imagenet")


@register("imagenet_resnet50")
def imagenet_resnet50(num_classes: int, width: int = 64, block_widths=None):
  """torchvision's ResNet-50 (width 64: 25,557,032 parameters for 1000 classes)."""
  return ResNet((3, 4, 6, 3), BottleneckBlock, num_classes, check_width(width),
                check_block_widths(block_widths, 16, True), stem="imagenet")
