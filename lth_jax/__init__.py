"""lth_jax: pruning and Lottery Ticket research in JAX/Flax.

The library, in four layers that import downwards only:

  lth_jax.sparsity   masks, criteria, selection, pruning, structured channels, Early-Bird, an optax wrapper
  lth_jax.metrics    calibration, OOD, corruptions, compression, prune potential, similarity
  lth_jax.training   TrainState, optimizers and schedules, the steps, Trainer, checkpoints
  lth_jax.methods    the pruning methods as plug-ins, and the cohort that trains seeds and tickets together

`lth_jax.experiment`, `evaluation`, `report` and `cli` are the command line's application on top.

What a user imports sits here, in `__all__`; a module among it imports both ways, `from lth_jax
import criteria` and `import lth_jax.criteria`. Importing lth_jax loads neither Orbax nor the data
sources (`lth_jax.data`, `lth_jax.training.checkpoint` load when first imported).
"""

import sys
import types

from lth_jax import metrics, sparsity, training
from lth_jax.metrics import calibration, ood
from lth_jax.sparsity import criteria, masks, pruning
from lth_jax.sparsity.optax import keep_pruned, masks_of, with_masks
from lth_jax.training import Trainer, TrainState

__all__ = ["masks", "pruning", "criteria", "keep_pruned", "masks_of", "with_masks", "Trainer", "TrainState",
           "sparsity", "metrics", "training", "calibration", "ood"]

# A module exported under a short name also imports as `lth_jax.<name>`, as `os.path` does: DESIGN.md's
# contract keeps user code written against `lth_jax.masks` working after the modules moved under sparsity/.
for _name in __all__:
  if isinstance(globals()[_name], types.ModuleType):
    sys.modules.setdefault(f"{__name__}.{_name}", globals()[_name])
del _name
