"""Flax models by name. `get(name, num_classes=..., **kwargs)` builds one (see `registry`); "pkg.module:Name"
names a user's own (see `own`)."""

from lth_jax.models import conv, cpu_conv, mlp, own, resnet, vgg  # noqa: F401  (register their models)
from lth_jax.models.registry import config_kwargs, defaults, get, keys, names, register  # noqa: F401
