"""A user's own model, named as "pkg.module:Name" (config.model.name) and built with config.model.kwargs.

`Name` is a flax.linen Module class, a flax.nnx Module class, or a function returning a linen Module. It is
called with config.model.kwargs, plus what the data fix where it takes arguments of these names:
`num_classes` and `input_shape` (one example's shape, which an NNX layer needs up front); an NNX class also
gets `rngs`. The result is a linen module with the zoo's interface, `apply(variables, x, train=...)`, and the
user's own variables: "params" (and "batch_stats" for BatchNorm) named by the module's attributes, so its
prunable leaves are found as for the zoo (kernels: ndim >= 2) and prune.exclude patterns name its layers.

An NNX module goes through flax's bridge, `nnx.bridge.ToLinen`: its nnx.Param state becomes "params" and its
nnx.BatchStat state "batch_stats", and it runs in NNX's train mode (`module.train()`: BatchNorm on the
batch's statistics, Dropout on) while training and in eval mode otherwise.
"""

import functools
import inspect
from typing import Any, Callable

import flax.linen as nn
from flax import nnx
from flax.core import FrozenDict
from flax.nnx import bridge

from lth_jax import user_code
from lth_jax.errors import UserError

KEY = "config.model.name"
DATA_ARGUMENTS = ("num_classes", "input_shape")   # what the data fix, for a constructor that takes them


class Own(nn.Module):
  """A user's module (a linen one, or an NNX class bridged to linen) behind the zoo's `__call__(x, train)`."""
  inner: nn.Module
  takes_train: bool   # whether the user's __call__ has a `train` argument

  def setup(self):
    nn.share_scope(self, self.inner)   # the user's variable names, not nested under "inner"

  def __call__(self, x, train: bool = False):
    if isinstance(self.inner, bridge.ToLinen):
      return self.inner(x, nnx_method=functools.partial(_call_nnx, train=train, takes_train=self.takes_train))
    return self.inner(x, train=train) if self.takes_train else self.inner(x)


def _call_nnx(module: nnx.Module, x, train: bool, takes_train: bool):
  """The bridged NNX module on `x` in train or eval mode (BatchNorm, Dropout read it)."""
  module.train() if train else module.eval()
  return module(x, train=train) if takes_train else module(x)


def build(name: str, kwargs: dict, num_classes: int | None = None, input_shape: tuple | None = None) -> nn.Module:
  """The model `name` ("pkg.module:Name") built with `kwargs`, wrapped as `Own`; a UserError naming the key
  when the import fails, the object is no Flax model, or its constructor refuses the arguments."""
  obj = user_code.load(name, KEY)
  is_nnx = isinstance(obj, type) and issubclass(obj, nnx.Module)
  parameters = _parameters(name, obj)
  given = {"num_classes": num_classes, "input_shape": input_shape}
  fixed = {k: given[k] for k in DATA_ARGUMENTS if k in parameters and given[k] is not None}
  clash = sorted(set(kwargs) & set(fixed))
  if clash:
    raise UserError(f"config.model.kwargs.{clash[0]} is fixed by the data ({fixed[clash[0]]!r} for config.data); "
                    "leave it out")
  arguments = {**fixed, **kwargs}
  try:
    if is_nnx:   # built abstractly now (no weights computed), so a bad argument stops before training
      nnx.eval_shape(lambda: obj(**arguments, rngs=nnx.Rngs(0)))
      inner, call = bridge.ToLinen(obj, kwargs=FrozenDict(arguments), metadata_fn=None), obj.__call__
    else:
      inner = obj(**arguments)
      call = type(inner).__call__
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001  -- whatever the user's constructor raises
    raise UserError(f"{KEY}={name!r} could not be built with config.model.kwargs={dict(kwargs)}: "
                    f"{user_code.first_line(e)}") from None
  if not isinstance(inner, nn.Module):
    raise UserError(f"{KEY}={name!r} returned {user_code.kind(inner)}, not a flax.linen Module")
  return Own(inner, "train" in inspect.signature(call).parameters)


def _parameters(name: str, obj: Any) -> set[str]:
  """The argument names of `obj`'s constructor (or of the function), refusing what builds no Flax model."""
  if isinstance(obj, (nn.Module, nnx.Module)):
    raise UserError(f"{KEY}={name!r} is {user_code.kind(obj)} instance; name its class, which "
                    "config.model.kwargs are passed to")
  if isinstance(obj, type) and issubclass(obj, nnx.Module):
    function: Callable = obj.__init__
  elif (isinstance(obj, type) and issubclass(obj, nn.Module)) or (callable(obj) and not isinstance(obj, type)):
    function = obj
  else:
    raise UserError(f"{KEY}={name!r} is {user_code.kind(obj)}, not a flax.linen or flax.nnx Module class, nor a "
                    "function returning a linen Module")
  try:
    return set(inspect.signature(function).parameters)
  except (TypeError, ValueError):   # a builtin without a signature: it gets only config.model.kwargs
    return set()

