"""The embedded default: the whole lottery-ticket comparison on scikit-learn's 8x8 digits (real data, no network).

Dense, one-shot, lottery ticket, random re-initialisation, iterative and dynamic pruning at 50/80/90%
sparsity with an MLP 64-128-64-10; a couple of minutes on two CPU cores.
"""

from lth_jax.config import base


def get_config():
  return base()
