"""Fully connected networks: the seeds' small MLPs and LeNet-300-100."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from lth_jax.errors import UserError
from lth_jax.models.registry import register

ACTIVATIONS = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "identity": lambda x: x,
}


def activation(name: str, key: str):
  if name not in ACTIVATIONS:
    raise UserError(f"{key}={name!r} is not an activation; allowed: {', '.join(sorted(ACTIVATIONS))}")
  return ACTIVATIONS[name]


class MLP(nn.Module):
  """Dense layers `hidden_0 .. hidden_{n-1}` then `output`; inputs are flattened.

  Layer names are stable: pruning options such as `prune.layer_scale.output` refer to them.
  """
  widths: Sequence[int]
  num_classes: int
  activation: str = "relu"
  output_activation: str = "identity"

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout or batch norm
    hidden = activation(self.activation, "config.model.activation")
    out = activation(self.output_activation, "config.model.output_activation")
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.widths):
      x = hidden(nn.Dense(width, name=f"hidden_{i}")(x))
    return out(nn.Dense(self.num_classes, name="output")(x))


@register("mlp")
def mlp(num_classes: int, widths=(128, 128), activation="relu", output_activation="identity"):
  if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
    raise UserError(f"config.model.widths={tuple(widths)!r} must be hidden-layer widths, integers >= 1")
  return MLP(tuple(widths), num_classes, activation, output_activation)


@register("lenet300_100")
def lenet300_100(num_classes: int, activation="relu"):
  """LeNet-300-100 of the Lottery Ticket paper."""
  return MLP((300, 100), num_classes, activation)
