"""Pure functions of pytrees: masks, pruning criteria, selection, structured channels, Early-Bird.

Nothing here trains or reads a config.
"""

from lth_jax.sparsity import criteria, early_bird, masks, optax, pruning, select, structured  # noqa: F401
