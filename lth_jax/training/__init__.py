"""Masked training: the state and optimizers, the steps, the trainer, checkpoints and resuming.

`checkpoint` and `resume` import Orbax, the heaviest dependency: they load when first used
(`lth_jax.training.checkpoint` or `from lth_jax.training import checkpoint`), not with the package.
"""

import importlib

from lth_jax.training import progress, state, step, trainer  # noqa: F401
from lth_jax.training.state import (  # noqa: F401
    TrainState, at_step, config_optimizer, learning_rate, optimizer, steps_per_epoch)
from lth_jax.training.progress import Progress  # noqa: F401
from lth_jax.training.trainer import LOOPS, Trainer  # noqa: F401

_LOADED_ON_FIRST_USE = ("checkpoint", "resume")


def __getattr__(name: str):
  """The submodules in `_LOADED_ON_FIRST_USE`, imported when first read as attributes (PEP 562)."""
  if name in _LOADED_ON_FIRST_USE:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
