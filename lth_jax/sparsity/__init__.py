"""Pure functions of pytrees: masks, pruning criteria, selection, structured channels (by hand and read
from a jaxpr), Early-Bird.

Nothing here trains or reads a config.
"""

from lth_jax.sparsity import criteria, early_bird, graph, group_criteria, masks, optax, pruning, select, structured  # noqa: F401
