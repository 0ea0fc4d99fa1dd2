"""Conv-2, Conv-4 and Conv-6: the small VGG-like CIFAR-10 networks of the Lottery Ticket paper.

Frankle & Carbin 2019, Figure 2: pairs of 3x3 'SAME' convolutions with ReLU, each pair followed by a 2x2
max-pool, then fully connected layers of 256 and 256 units and the output layer. Conv layers keep their
biases, as in the paper. Layer names: `conv_0 ..`, `hidden_0`, `hidden_1`, `output`, so the paper's
per-layer pruning rates read as `prune.layer_scale` globs ('conv_*=0.5', 'output/*=0.5').

Parameter counts (10 classes, biases included): Conv-2 4,301,642; Conv-4 2,425,930; Conv-6 2,262,602.
Without biases (the paper counts weights only): 4,300,992 (4.3M), 2,425,024 (2.4M) and 2,261,184 -- the
paper prints 1.7M for Conv-6, which its own layer list does not give; we follow the layer list.
"""

from typing import Sequence

import flax.linen as nn

from lth_jax.models import cpu_conv
from lth_jax.models.registry import register

# Figure 2 of the paper: Gaussian Glorot initialization for every layer.
_init = nn.initializers.glorot_normal()


class ConvNet(nn.Module):
  """`filters` holds conv widths in pairs; a 2x2 max-pool follows each pair."""
  filters: Sequence[int]
  num_classes: int
  hidden: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout or batch norm
    for i, f in enumerate(self.filters):
      x = nn.relu(nn.Conv(f, (3, 3), padding="SAME", kernel_init=_init, name=f"conv_{i}",
                        conv_general_dilated=cpu_conv.conv_general_dilated)(x))
      if i % 2 == 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, kernel_init=_init, name=f"hidden_{i}")(x))
    return nn.Dense(self.num_classes, kernel_init=_init, name="output")(x)


@register("conv2")
def conv2(num_classes: int):
  return ConvNet((64, 64), num_classes)


@register("conv4")
def conv4(num_classes: int):
  return ConvNet((64, 64, 128, 128), num_classes)


@register("conv6")
def conv6(num_classes: int):
  return ConvNet((64, 64, 128, 128, 256, 256), num_classes)
