"""VGG-11 and VGG-16 with BatchNorm for 32x32 inputs: the CIFAR VGG of network slimming.

Liu et al. 2017 (Eric-mingjie/network-slimming, models/vgg.py): the conv stacks of Simonyan & Zisserman's
configurations A and D, each conv 3x3 'SAME' without bias + BatchNorm + ReLU, a 2x2 max-pool between
groups but none after the last, a 2x2 average pool down to 1x1, and a single classifier layer `output`
from 512 features -- no 4096-wide hidden layers. VGG-11 has 9,228,362 parameters and VGG-16 14,724,042
for 10 classes (convs, BatchNorm scale and bias, output kernel and bias).

Names: `conv_{i}` and the BatchNorm after it `bn_{i}`, i counting convs from 0, so channel pruning by
BatchNorm scale (network slimming) pairs each BN with its conv by index.
"""

from typing import Sequence, Union

import flax.linen as nn

from lth_jax.models import register

# Conv widths; "M" is a 2x2 max-pool. The final pool of the ImageNet configurations is dropped.
CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
}

# Network slimming's initialization: convs normal with variance 2/fan_out, BatchNorm scale 0.5 (its
# sparsity penalty on BN scales starts from there), classifier normal(0, 0.01), biases zero.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class VGG(nn.Module):
  layers: Sequence[Union[int, str]]
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    i = 0
    for layer in self.layers:
      if layer == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      x = nn.Conv(layer, (3, 3), padding="SAME", use_bias=False, kernel_init=conv_init, name=f"conv_{i}")(x)
      # PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (the weight on the old running average).
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       scale_init=nn.initializers.constant(0.5), name=f"bn_{i}")(x)
      x = nn.relu(x)
      i += 1
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="output")(x)


@register("vgg11")
def vgg11(num_classes: int):
  return VGG(CONFIGS[11], num_classes)


@register("vgg16")
def vgg16(num_classes: int):
  return VGG(CONFIGS[16], num_classes)
