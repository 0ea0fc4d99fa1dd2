"""lth_jax: pruning and Lottery Ticket research in JAX/Flax.

The library, in four layers that import downwards only:

  lth_jax.sparsity   masks, criteria, selection, pruning, structured channels, Early-Bird, an optax wrapper
  lth_jax.metrics    calibration, OOD, corruptions, compression, prune potential, similarity
  lth_jax.training   TrainState, optimizers and schedules, the steps, Trainer, checkpoints
  lth_jax.methods    the pruning methods as plug-ins, and the cohort that trains seeds and tickets together

`lth_jax.experiment`, `evaluation`, `report` and `cli` are the command line's application on top.
"""

import sys

from lth_jax import metrics, sparsity, training  # noqa: F401
from lth_jax.metrics import calibration, ood  # noqa: F401
from lth_jax.sparsity import criteria, masks, pruning  # noqa: F401
from lth_jax.sparsity.optax import keep_pruned, masks_of, with_masks  # noqa: F401
from lth_jax.training import Trainer, TrainState  # noqa: F401

# DESIGN.md's contract: user code written against `lth_jax.masks` / `lth_jax.pruning` keeps working,
# including `import lth_jax.masks`.
sys.modules[__name__ + ".masks"] = masks
sys.modules[__name__ + ".pruning"] = pruning
