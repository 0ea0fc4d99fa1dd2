"""Pure functions of pytrees: masks, pruning criteria, selection, structured channels (read from a jaxpr,
scored on their groups), Early-Bird.

Nothing here trains or reads a config.
"""

from lth_jax.sparsity import criteria, early_bird, graph, group_criteria, masks, optax, pruning, select  # noqa: F401
