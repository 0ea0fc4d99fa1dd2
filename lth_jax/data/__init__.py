"""Data sets by name, as numpy arrays split into train / val / test.

`load(config.data, seed)` returns a `Dataset` (see `registry`); the sources below register themselves.
"""

from lth_jax.data import builtin, files, pixels, tfds_source  # noqa: F401  (register their sources)
from lth_jax.data.registry import Dataset, Split, load, names, register, split  # noqa: F401
