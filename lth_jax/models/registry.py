"""Flax models by name. `get(name, num_classes=..., **kwargs)` builds one; later modules register more."""

import inspect
from typing import Callable

import flax.linen as nn

from lth_jax.errors import UserError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
  def decorate(builder):
    _REGISTRY[name] = builder
    return builder
  return decorate


def names() -> list[str]:
  return sorted(_REGISTRY)


def keys(name: str) -> set[str]:
  """The config.model keys model `name` takes (its builder's arguments but num_classes)."""
  if name not in _REGISTRY:
    raise UserError(f"config.model.name={name!r} is not a model; allowed: {', '.join(names())}")
  return set(inspect.signature(_REGISTRY[name]).parameters) - {"num_classes"}


def defaults(name: str) -> dict:
  """The config.model keys model `name` takes that have a default, at that default."""
  allowed = keys(name)
  return {k: p.default for k, p in inspect.signature(_REGISTRY[name]).parameters.items()
          if k in allowed and p.default is not inspect.Parameter.empty}


def get(name: str, **kwargs) -> nn.Module:
  allowed = keys(name)
  builder = _REGISTRY[name]
  unknown = sorted(set(kwargs) - allowed - {"num_classes"})
  if unknown:
    raise UserError(f"config.model.{unknown[0]} does not apply to model {name!r}; "
                    f"its keys: {', '.join(sorted(allowed)) or 'none'}")
  return builder(**kwargs)


def config_kwargs(model_config) -> dict:
  """config.model's options for `get`, without the name."""
  return {k: v for k, v in model_config.to_dict().items() if k != "name"}
