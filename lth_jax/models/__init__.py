"""Flax models by name. `get(name, num_classes=..., **kwargs)` builds one (see `registry`)."""

from lth_jax.models import conv, cpu_conv, mlp, resnet, vgg  # noqa: F401  (register their models)
from lth_jax.models.registry import config_kwargs, defaults, get, keys, names, register  # noqa: F401
