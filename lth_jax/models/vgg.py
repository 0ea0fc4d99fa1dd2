"""VGG-11 and VGG-16 with BatchNorm for 32x32 inputs: the CIFAR VGG of network slimming.

Liu et al. 2017 (Eric-mingjie/network-slimming, models/vgg.py): the conv stacks of Simonyan & Zisserman's
configurations A and D, each conv 3x3 'SAME' without bias + BatchNorm + ReLU, a 2x2 max-pool between
groups but none after the last, a 2x2 average pool down to 1x1, and a single classifier layer `output`
from 512 features -- no 4096-wide hidden layers. VGG-11 has 9,228,362 parameters and VGG-16 14,724,042
for 10 classes (convs, BatchNorm scale and bias, output kernel and bias).

Names: `conv_{i}` and the BatchNorm after it `bn_{i}`, i counting convs from 0.

`widths` (config.model.widths) overrides the conv widths one per conv, pools staying where they are.
Absent, the widths are the configuration's own.
"""

from typing import Optional, Sequence, Union

import flax.linen as nn

from lth_jax.errors import UserError
from lth_jax.models import cpu_conv
from lth_jax.models.registry import register

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
    # every "M" and the final pool halve the image; below 2 pixels a pool leaves nothing, and the classifier
    # would read an empty feature vector
    halvings = self.layers.count("M") + 1
    if x.ndim == 4 and min(x.shape[1:3]) < 2 ** halvings:
      raise UserError(f"config.model.name=vgg{sum(layer != 'M' for layer in self.layers) + 3} halves the image "
                      f"{halvings} times and needs at least {2 ** halvings}x{2 ** halvings} pixels; "
                      f"the data's images are {x.shape[1]}x{x.shape[2]}")
    i = 0
    for layer in self.layers:
      if layer == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      x = nn.Conv(layer, (3, 3), padding="SAME", use_bias=False, kernel_init=conv_init, name=f"conv_{i}",
                  conv_general_dilated=cpu_conv.conv_general_dilated)(x)
      # PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (the weight on the old running average).
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       scale_init=nn.initializers.constant(0.5), name=f"bn_{i}")(x)
      x = nn.relu(x)
      i += 1
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="output")(x)


def with_widths(depth: int, widths: Optional[Sequence[int]]):
  """CONFIGS[depth] with its conv widths replaced, in order, by `widths` (None: unchanged)."""
  layers = CONFIGS[depth]
  if widths is None:
    return layers
  n_convs = sum(layer != "M" for layer in layers)
  widths = tuple(widths)
  if len(widths) != n_convs or not all(isinstance(w, int) and w > 0 for w in widths):
    raise UserError(f"config.model.widths needs {n_convs} positive conv widths for vgg{depth}, "
                    f"got {widths!r}")
  it = iter(widths)
  return tuple(layer if layer == "M" else next(it) for layer in layers)


@register("vgg11")
def vgg11(num_classes: int, widths: Optional[Sequence[int]] = None):
  return VGG(with_widths(11, widths), num_classes)


@register("vgg16")
def vgg16(num_classes: int, widths: Optional[Sequence[int]] = None):
  return VGG(with_widths(16, widths), num_classes)
