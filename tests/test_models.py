"""The registered models: exact parameter counts against per-layer formulas, shapes, BatchNorm, names."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import masks, models
from lth_jax.errors import UserError

X = (2, 32, 32, 3)
BN_MODELS = ["imagenet_resnet18", "imagenet_resnet50", "resnet18", "resnet20", "resnet32", "resnet56", "vgg11", "vgg16"]


def conv(cin, cout, k=3, bias=False):
  return k * k * cin * cout + (cout if bias else 0)


def bn(c):
  return 2 * c  # scale and bias; the running averages are batch_stats, not params


def dense(fan_in, fan_out):
  return fan_in * fan_out + fan_out


def shapes(name, num_classes=10, **kwargs):
  """Variable shapes without computing anything, so even VGG-16 costs nothing."""
  model = models.get(name, num_classes=num_classes, **kwargs)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(X)))


def n_params(name, **kwargs):
  return sum(leaf.size for leaf in jax.tree.leaves(shapes(name, **kwargs)["params"]))


def lth_conv(filters):
  """Conv-2/4/6: biased 3x3 convs, a pool per pair, FC 256, 256, 10."""
  widths = (3,) + filters
  total = sum(conv(a, b, bias=True) for a, b in zip(widths, widths[1:]))
  side = 32 // 2 ** (len(filters) // 2)
  return total + dense(side * side * filters[-1], 256) + dense(256, 256) + dense(256, 10)


def basic_block(cin, cout):
  total = conv(cin, cout) + bn(cout) + conv(cout, cout) + bn(cout)
  return total + (conv(cin, cout, k=1) + bn(cout) if cin != cout else 0)


def bottleneck_block(cin, f):
  total = conv(cin, f, k=1) + bn(f) + conv(f, f) + bn(f) + conv(f, 4 * f, k=1) + bn(4 * f)
  return total + (conv(cin, 4 * f, k=1) + bn(4 * f) if cin != 4 * f else 0)


def resnet(stages, widths, stem, bottleneck=False, stem_kernel=3, classes=10):
  total, cin = conv(3, stem, k=stem_kernel) + bn(stem), stem
  for n, width in zip(stages, widths):
    for _ in range(n):
      total += bottleneck_block(cin, width) if bottleneck else basic_block(cin, width)
      cin = 4 * width if bottleneck else width
  return total + dense(cin, classes)


def vgg(layers):
  convs = [c for c in layers if c != "M"]
  return sum(conv(a, b) + bn(b) for a, b in zip((3,) + tuple(convs), convs)) + dense(512, 10)


@pytest.mark.parametrize("name,kwargs,expected", [
    ("conv2", {}, lth_conv((64, 64))),
    ("conv4", {}, lth_conv((64, 64, 128, 128))),
    ("conv6", {}, lth_conv((64, 64, 128, 128, 256, 256))),
    ("resnet20", {}, resnet((3, 3, 3), (16, 32, 64), 16)),
    ("resnet56", {}, resnet((9, 9, 9), (16, 32, 64), 16)),
    ("resnet20", {"bottleneck": True}, resnet((2, 2, 2), (16, 32, 64), 16, bottleneck=True)),
    ("resnet20", {"width": 32}, resnet((3, 3, 3), (32, 64, 128), 32)),
    ("resnet18", {}, resnet((2, 2, 2, 2), (64, 128, 256, 512), 64)),
    ("imagenet_resnet50", {}, resnet((3, 4, 6, 3), (64, 128, 256, 512), 64, bottleneck=True, stem_kernel=7)),
    ("imagenet_resnet50", {"width": 8}, resnet((3, 4, 6, 3), (8, 16, 32, 64), 8, bottleneck=True, stem_kernel=7)),
    ("vgg11", {}, vgg((64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512))),
    ("vgg16", {}, vgg((64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512))),
])
def test_parameter_counts(name, kwargs, expected):
  assert n_params(name, **kwargs) == expected


def test_known_counts():
  # kuangliu/pytorch-cifar's ResNet-18; the Lottery Ticket paper's Conv-2/4 (4.3M, 2.4M weights).
  assert n_params("resnet18") == 11_173_962
  assert round(n_params("conv2") / 1e6, 1) == 4.3
  assert round(n_params("conv4") / 1e6, 1) == 2.4
  assert round(n_params("resnet20") / 1e6, 2) == 0.27
  # torchvision's resnet18() and resnet50(): sum(p.numel() for p in model.parameters())
  assert sum(leaf.size for leaf in jax.tree.leaves(shapes("imagenet_resnet18", 1000)["params"])) == 11_689_512
  assert sum(leaf.size for leaf in jax.tree.leaves(shapes("imagenet_resnet50", 1000)["params"])) == 25_557_032


def test_imagenet_stem_quarters_the_resolution():
  """torchvision's stem: 224x224 reaches the first stage at 56x56 and the last at 7x7."""
  model = models.get("imagenet_resnet50", num_classes=5, width=8)
  x = jnp.zeros((1, 224, 224, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  _, state = jax.eval_shape(lambda v: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
                            variables)
  out = state["intermediates"]
  assert out["stage1_block0"]["__call__"][0].shape == (1, 56, 56, 32)
  assert out["stage4_block2"]["__call__"][0].shape == (1, 7, 7, 256)


@pytest.mark.parametrize("name", models.names())
def test_output_shape_and_output_layer(name):
  model = models.get(name, num_classes=7)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(X)))
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(X), train=False), variables)
  assert logits.shape == (2, 7)
  assert any(n.startswith("output/") for n, _ in masks.named_leaves(variables["params"]))


# Conv and Dense layers per model: stem + block convs + projection shortcuts + output, and so on.
N_KERNELS = {
    "conv2": 2 + 3, "conv4": 4 + 3, "conv6": 6 + 3,
    "resnet20": 1 + 2 * 9 + 2 + 1, "resnet32": 1 + 2 * 15 + 2 + 1, "resnet56": 1 + 2 * 27 + 2 + 1,
    "resnet18": 1 + 2 * 8 + 3 + 1, "imagenet_resnet18": 1 + 2 * 8 + 3 + 1,
    "imagenet_resnet50": 1 + 3 * 16 + 4 + 1, "vgg11": 8 + 1, "vgg16": 13 + 1,
}


@pytest.mark.parametrize("name", sorted(N_KERNELS))
def test_prunable_marks_exactly_the_kernels(name):
  params = shapes(name)["params"]
  which = masks.prunable(params)
  marked = [n for (n, _), w in zip(masks.named_leaves(params), jax.tree.leaves(which)) if w]
  assert len(marked) == N_KERNELS[name]
  assert all(n.endswith("/kernel") for n in marked)
  kernels = [n for n, _ in masks.named_leaves(params) if n.endswith("/kernel")]
  assert sorted(marked) == sorted(kernels)  # no BatchNorm scale or bias is prunable
  kept = masks.prunable(params, ("output/*",))  # the glob configs use to leave the last layer dense
  assert sum(jax.tree.leaves(kept)) == N_KERNELS[name] - 1 and not kept["output"]["kernel"]


@pytest.mark.parametrize("name", BN_MODELS)
def test_every_batchnorm_follows_a_named_conv(name):
  """'.../bn1' normalizes '.../conv1', 'stem_bn' 'stem_conv', 'bn_3' 'conv_3': channel pruning relies on it."""
  variables = shapes(name)
  params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  stats = flax.traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  bns = {n.rsplit("/", 1)[0] for n in stats}
  assert bns and bns == {n.rsplit("/", 1)[0] for n in params if n.endswith("/scale")}
  for path in bns:
    parent, _, last = path.rpartition("/")
    conv_path = "/".join(filter(None, [parent, last.replace("bn", "conv")]))
    assert params[conv_path + "/kernel"].shape[-1] == params[path + "/scale"].shape[0]
    assert conv_path + "/bias" not in params  # BatchNorm's bias makes a conv bias redundant


def random_variables(model, x):
  """Random params and fresh statistics (mean 0, var 1), without `init`'s slow eager random draws."""
  rng = np.random.default_rng(0)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.1, s.dtype), variables["params"])
  stats = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.full(s.shape, masks.leaf_name(path).endswith("var"), s.dtype), variables["batch_stats"])
  return {"params": params, "batch_stats": stats}


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])  # one per family: both build BatchNorm alike
def test_batch_stats_update_only_in_training(name):
  model = models.get(name, num_classes=10)
  x = jnp.asarray(np.random.default_rng(1).normal(3.0, 2.0, size=X), jnp.float32)
  variables = random_variables(model, x)

  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (2, 10)
  before, after = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates["batch_stats"])
  assert len(before) == len(after) > 0
  assert all(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(before, after))

  # Eval reads the running averages and, even when allowed to, does not change them.
  assert model.apply(variables, x, train=False).shape == (2, 10)
  _, unchanged = model.apply(variables, x, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, unchanged["batch_stats"], variables["batch_stats"])


def test_models_without_batchnorm_have_no_batch_stats():
  for name in ("conv2", "conv4", "conv6"):
    assert set(shapes(name)) == {"params"}


@pytest.mark.parametrize("name,key", [("resnet20", "widths"), ("conv2", "width"), ("vgg16", "bottleneck"),
                                      ("resnet18", "bottleneck")])
def test_unknown_keys_rejected(name, key):
  with pytest.raises(UserError, match=f"config.model.{key} "):
    models.get(name, num_classes=10, **{key: 1})


def test_bottleneck_depth_must_fit():
  with pytest.raises(UserError, match="config.model.bottleneck"):
    models.get("resnet32", num_classes=10, bottleneck=True)
  assert n_params("resnet56", bottleneck=True) == resnet((6, 6, 6), (16, 32, 64), 16, bottleneck=True)
