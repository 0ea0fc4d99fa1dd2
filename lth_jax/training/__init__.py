"""Masked training: the state and optimizers, the steps, the trainer, checkpoints and resuming."""

from lth_jax.training import checkpoint, progress, state, step, trainer  # noqa: F401
from lth_jax.training.state import TrainState, learning_rate, optimizer, steps_per_epoch  # noqa: F401
from lth_jax.training.progress import Progress  # noqa: F401
from lth_jax.training.trainer import LOOPS, Trainer  # noqa: F401
