"""Flax models by name. `get(name, num_classes=..., **kwargs)` builds one; later modules register more.

A name "pkg.module:Name" is a user's own model (lth_jax.models.own), built from its one key, `kwargs`.
"""

import inspect
from typing import Callable

import flax.linen as nn

from lth_jax import user_code
from lth_jax.errors import UserError
from lth_jax.models import own

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
  def decorate(builder):
    _REGISTRY[name] = builder
    return builder
  return decorate


def names() -> list[str]:
  return sorted(_REGISTRY)


def keys(name: str) -> set[str]:
  """The config.model keys model `name` takes (its builder's arguments but num_classes; a user's model: kwargs)."""
  if user_code.is_import_path(name):
    return {"kwargs"}
  if name not in _REGISTRY:
    raise UserError(f"config.model.name={name!r} is not a model; allowed: {', '.join(names())}, or your own "
                    "as 'pkg.module:Name'")
  return set(inspect.signature(_REGISTRY[name]).parameters) - {"num_classes"}


def defaults(name: str) -> dict:
  """The config.model keys model `name` takes that have a default, at that default."""
  if user_code.is_import_path(name):
    return {"kwargs": {}}
  allowed = keys(name)
  return {k: p.default for k, p in inspect.signature(_REGISTRY[name]).parameters.items()
          if k in allowed and p.default is not inspect.Parameter.empty}


def get(name: str, *, input_shape: tuple | None = None, **kwargs) -> nn.Module:
  """Model `name` built with `kwargs` (its config.model keys and num_classes).

  `input_shape` (one example's) goes to a user's model whose constructor takes it; the zoo's infer it.
  """
  allowed = keys(name)
  unknown = sorted(set(kwargs) - allowed - {"num_classes"})
  if unknown:
    note = " (it holds the arguments of a model given as 'pkg.module:Name')" if unknown[0] == "kwargs" else ""
    raise UserError(f"config.model.{unknown[0]} does not apply to model {name!r}{note}; "
                    f"its keys: {', '.join(sorted(allowed)) or 'none'}")
  if user_code.is_import_path(name):
    return own.build(name, dict(kwargs.get("kwargs", {})), kwargs.get("num_classes"), input_shape)
  return _REGISTRY[name](**kwargs)


def config_kwargs(model_config) -> dict:
  """config.model's options for `get`, without the name."""
  return {k: v for k, v in model_config.to_dict().items() if k != "name"}
