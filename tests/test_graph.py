"""Channel groups read from a jaxpr, and the narrower program `shrink` makes of it.

Expected groups are derived by hand from each architecture: lth_jax's VGG and ResNets against their
wiring written down here (each BatchNorm with the conv before it and the layer after it; for the residual
streams, He et al.'s rule that every tensor summed into a stream shares its channels); the models below
against their own wiring (concatenation offsets, flatten row blocks, depthwise ties). The narrow function
is checked against the full function on zero-masked params, for random channel choices, in eval mode and
in training (BatchNorm on batch statistics, its running statistics returned narrowed).
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lth_jax import models
from lth_jax.sparsity import graph, masks
from tests.helpers import leaves_equal


def trivial(leaf, axis, size, blocks=1, stride=None):
  """Slice whose channel c sits at c + b * stride for b < blocks (stride: the channel count)."""
  stride = stride or size
  return graph.Slice(leaf, axis, tuple(tuple(c + b * stride for b in range(blocks)) for c in range(size)))


def random_keep(groups, seed=0):
  rng = np.random.default_rng(seed)
  keep = []
  for g in groups:
    k = rng.random(g.size) < 0.5
    k[rng.integers(g.size)] = True   # never a group emptied
    keep.append(k)
  return keep


def random_variables(init, *args, seed=1):
  """Variables of init's shapes, drawn without running it: kernels at He scale, BN variances positive.

  Cheaper than `init` (no convolution is compiled), and no channel is special (BN scales not all 1).
  """
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = masks.leaf_name(path)
    if name.endswith("var"):
      value = rng.uniform(0.5, 1.5, s.shape)
    elif name.endswith("kernel"):
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(s.shape[:-1])), s.shape)
    else:
      value = rng.normal(0.5, 0.3, s.shape)
    return jnp.asarray(value, s.dtype)
  return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(init, jax.random.key(0), *args))


def assert_shrinks(fn, variables, x, groups, seed=0, other_batch=False):
  keep = random_keep(groups, seed)
  narrow_fn, narrow_params = graph.shrink(fn, variables, groups, keep)
  full_fn, narrow_jit = jax.jit(fn), jax.jit(narrow_fn)
  want = full_fn(graph.mask(variables, groups, keep), x)
  got = narrow_jit(narrow_params, x)
  scale = float(jnp.abs(want).max())
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
  assert float(jnp.abs(want - full_fn(variables, x)).max()) > 1e-3 * scale   # the pruning did change fn
  size = lambda t: sum(np.size(leaf) for leaf in jax.tree.leaves(t))
  assert size(narrow_params) < size(variables)
  if other_batch:  # the same narrow function, traced again at another batch size
    x3 = jnp.concatenate([x, x[:1]])
    np.testing.assert_allclose(narrow_jit(narrow_params, x3)[:len(x)], got, rtol=1e-4, atol=1e-5 * scale)


def apply_eval(model):
  return lambda variables, x: model.apply(variables, x, train=False)


# --- lth_jax's zoo against the hand-written coupling ------------------------------------------------

ZOO = {"vgg11": dict(widths=(4, 6, 6, 6, 8, 8, 8, 5)), "resnet20": dict(width=4),
       "resnet20_bottleneck": dict(width=4, bottleneck=True)}


def zoo(name):
  model = models.get(name.split("_")[0], num_classes=10, **ZOO[name])
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3) if name.startswith("vgg") else (2, 8, 8, 3))
  return model, random_variables(model.init, x), x


def get(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def network_order(name):
  """'bn_2' before 'bn_10', blocks in network order."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def inner_pairs(params):
  """(conv, its BatchNorm, the layer reading them) whose channels stay inside one layer pair (no addition)."""
  if "stem_conv" not in params:   # VGG: conv_i -> bn_i -> conv_{i+1}, the last one -> output
    n = len([k for k in params if k.startswith("conv_")])
    return [(f"conv_{i}", f"bn_{i}", f"conv_{i + 1}" if i + 1 < n else "output") for i in range(n)]
  out = []
  for block in sorted((k for k in params if k.startswith("stage")), key=network_order):
    inner = (1, 2) if "conv3" in params[block] else (1,)   # bottleneck or basic: the block output is summed
    out += [(f"{block}/conv{i}", f"{block}/bn{i}", f"{block}/conv{i + 1}") for i in inner]
  return out


def handwritten_groups(variables):
  """Each inner conv's output channels with its BatchNorm and the next layer's inputs."""
  params, out = variables["params"], set()
  for conv, bn, nxt in inner_pairs(params):
    c = get(params, bn)["scale"].shape[0]
    slices = [trivial(f"params/{conv}/kernel", 3, c)]
    slices += [trivial(f"{col}/{bn}/{leaf}", 0, c) for col, leaf in
               (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var"))]
    kernel = get(params, nxt)["kernel"]
    # a Dense reads the flattened H x W x C map: channel c at rows c + b * C
    slices.append(trivial(f"params/{nxt}/kernel", 0, c, kernel.shape[0] // c) if kernel.ndim == 2
                  else trivial(f"params/{nxt}/kernel", 2, c))
    out.add(graph.Group(c, tuple(sorted(slices, key=lambda s: (s.leaf, s.axis)))))
  return out


def residual_groups(params):
  """The residual streams: the stem or a projection, every block output summed into it, and its readers."""
  def produced(conv, bn):
    c = get(params, conv)["kernel"].shape[-1]
    return c, [trivial(f"params/{conv}/kernel", 3, c), trivial(f"params/{bn}/scale", 0, c),
               trivial(f"params/{bn}/bias", 0, c), trivial(f"batch_stats/{bn}/mean", 0, c),
               trivial(f"batch_stats/{bn}/var", 0, c)]
  width, stream = produced("stem_conv", "stem_bn")
  out = set()
  for block in sorted((k for k in params if k.startswith("stage")), key=network_order):
    p = params[block]
    stream.append(trivial(f"params/{block}/conv1/kernel", 2, width))
    if "shortcut_conv" in p:   # the stream ends: its channels go on through a projection
      stream.append(trivial(f"params/{block}/shortcut_conv/kernel", 2, width))
      out.add(graph.Group(width, tuple(sorted(stream, key=lambda s: (s.leaf, s.axis)))))
      width, stream = produced(f"{block}/shortcut_conv", f"{block}/shortcut_bn")
    last = "3" if "conv3" in p else "2"
    stream += produced(f"{block}/conv{last}", f"{block}/bn{last}")[1]
  stream.append(trivial("params/output/kernel", 0, width))
  out.add(graph.Group(width, tuple(sorted(stream, key=lambda s: (s.leaf, s.axis)))))
  return out


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_groups_are_the_handwritten_ones(name):
  model, variables, x = zoo(name)
  groups = graph.channel_groups(apply_eval(model), variables, x)
  want = handwritten_groups(variables)
  if not name.startswith("vgg"):
    want |= residual_groups(variables["params"])
  assert len(groups) == len(set(groups))
  assert set(groups) == want


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_shrinks_to_the_masked_function(name):
  model, variables, x = zoo(name)
  fn = apply_eval(model)
  assert_shrinks(fn, variables, x, graph.channel_groups(fn, variables, x))


class TrainableBlock(nn.Module):
  """A stem and a residual block, BatchNorm after every conv, on batch statistics when training."""

  @nn.compact
  def __call__(self, x, train=False):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.5, name=name)
    h = nn.relu(bn("bn0")(nn.Conv(6, (3, 3), name="stem")(x)))
    y = nn.relu(bn("bn1")(nn.Conv(5, (3, 3), name="conv1")(h)))
    h = nn.relu(h + bn("bn2")(nn.Conv(6, (3, 3), name="conv2")(y)))
    return nn.Dense(3, name="head")(h.reshape((h.shape[0], -1)))


def unoptimized(fn):
  """jit without XLA's slow optimizations: these tests compare values, not speed."""
  def call(*args):
    return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)
  return call


def test_training_program_has_the_eval_groups_and_shrinks_with_its_statistics():
  """BatchNorm on the batch's statistics, the running ones returned: the same groups, narrowed updates."""
  model = TrainableBlock()
  x = jax.random.normal(jax.random.key(0), (4, 4, 4, 3))
  variables = random_variables(model.init, x)
  fn = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  groups = graph.channel_groups(fn, variables, x, updates=True)
  assert len(groups) == 2 and set(groups) == set(graph.channel_groups(apply_eval(model), variables, x))
  keep = [np.asarray([True, False, True, True, False, True]), np.asarray([False, True, True, False, True])]
  keep = keep if groups[0].size == 6 else keep[::-1]
  narrow_fn, narrow_variables = graph.shrink(fn, variables, groups, keep, updates=True)
  want, want_stats = unoptimized(fn)(graph.mask(variables, groups, keep), x)
  got, got_stats = unoptimized(narrow_fn)(narrow_variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))
  # the updated running statistics are the masked network's, kept channels only
  want_stats = graph.narrow({**variables, **want_stats}, groups, keep)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_stats["batch_stats"],
               want_stats["batch_stats"])
  assert not leaves_equal(got_stats["batch_stats"], narrow_variables["batch_stats"])   # they were updated


def test_updates_must_name_leaves_of_params():
  params, x = {"w": jnp.ones((3, 4)), "s": jnp.ones(4), "v": jnp.ones((4, 2))}, jnp.ones((2, 3))
  with pytest.raises(ValueError, match="fn must return \\(output, updates\\)"):
    graph.channel_groups(lambda p, x: x @ p["w"], params, x, updates=True)
  with pytest.raises(ValueError, match="fn's updates hold 't'"):
    graph.channel_groups(lambda p, x: (x @ p["w"], {"t": p["s"]}), params, x, updates=True)
  fn = lambda p, x: ((x @ p["w"] * p["s"]) @ p["v"], {"s": p["s"] * 2})
  assert not graph.channel_groups(fn, params, x)   # s * 2 is an output: its channels are fixed
  (g,) = graph.channel_groups(fn, params, x, updates=True)   # a new value of s: they are s's
  assert g.leaves() == {"w", "s", "v"}


# --- models written only here -----------------------------------------------------------------------

class ProjectionBlock(nn.Module):
  """A stem, then a residual block whose 1x1 conv + BN shortcut widens 6 -> 10 channels."""

  @nn.compact
  def __call__(self, x):
    bn = lambda: nn.BatchNorm(use_running_average=True)
    h = nn.relu(bn()(nn.Conv(6, (3, 3), name="stem")(x)))
    y = nn.relu(bn()(nn.Conv(8, (3, 3), strides=2, name="conv1")(h)))
    y = bn()(nn.Conv(10, (3, 3), name="conv2")(y))
    s = bn()(nn.Conv(10, (1, 1), strides=2, name="shortcut")(h))
    return nn.Dense(3, name="head")(jnp.mean(nn.relu(y + s), axis=(1, 2)))


class ConcatBlock(nn.Module):
  """Two branches concatenated (4 + 5 channels), a conv over both, a flatten of 4x4x7 into a Dense."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(6, (3, 3), name="stem")(x))
    c = nn.relu(jnp.concatenate([nn.Conv(4, (1, 1), name="a")(h), nn.Conv(5, (3, 3), name="b")(h)], -1))
    y = nn.relu(nn.Conv(7, (3, 3), name="mix")(c))
    return nn.Dense(3, name="head")(y.reshape((y.shape[0], -1)))


class DepthwiseSeparable(nn.Module):
  """MobileNet's block: a 3x3 depthwise conv (channel multiplier `multiplier`) and a 1x1 pointwise conv."""
  multiplier: int = 1

  @nn.compact
  def __call__(self, x):
    bn = lambda name: nn.BatchNorm(use_running_average=True, name=name)
    h = nn.relu(bn("bn0")(nn.Conv(8, (3, 3), name="stem")(x)))
    d = nn.relu(bn("bn1")(nn.Conv(8 * self.multiplier, (3, 3), feature_group_count=8, name="dw")(h)))
    p = nn.relu(bn("bn2")(nn.Conv(12, (1, 1), name="pw")(d)))
    return nn.Dense(3, name="head")(jnp.mean(p, axis=(1, 2)))


TEST_MODELS = {"projection": ProjectionBlock(), "concat": ConcatBlock(), "depthwise": DepthwiseSeparable(),
               "depthwise_x2": DepthwiseSeparable(multiplier=2)}


def own(name):
  model = TEST_MODELS[name]
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  return model.apply, random_variables(model.init, x), x


def group_with(groups, leaf, axis):
  (g,) = [g for g in groups if any((s.leaf, s.axis) == (leaf, axis) for s in g.slices)]
  return g


@pytest.mark.parametrize("seed,name", list(enumerate(TEST_MODELS)))
def test_own_models_shrink_to_the_masked_function(seed, name):
  fn, variables, x = own(name)
  assert_shrinks(fn, variables, x, graph.channel_groups(fn, variables, x), seed, other_batch=True)


def test_projection_shortcut_ties_the_block_output_and_the_shortcut():
  fn, variables, x = own("projection")
  groups = graph.channel_groups(fn, variables, x)
  out = group_with(groups, "params/conv2/kernel", 3)
  assert {"params/shortcut/kernel", "params/head/kernel"} <= out.leaves()
  assert group_with(groups, "params/shortcut/kernel", 2) == group_with(groups, "params/conv1/kernel", 2)
  assert len(groups) == 3   # stem, conv1, the summed stream; the head's outputs reach the output


def test_concatenation_offsets_and_flatten_blocks():
  fn, variables, x = own("concat")
  groups = graph.channel_groups(fn, variables, x)
  a, b = group_with(groups, "params/a/kernel", 3), group_with(groups, "params/b/kernel", 3)
  assert trivial("params/mix/kernel", 2, 4) in a.slices
  assert graph.Slice("params/mix/kernel", 2, tuple((4 + c,) for c in range(5))) in b.slices
  # mix keeps 4x4 positions (SAME padding); the Dense row of (h, w, c) is (4 h + w) * 7 + c
  mix = group_with(groups, "params/mix/kernel", 3)
  assert trivial("params/head/kernel", 0, 7, blocks=16) in mix.slices
  assert {s.leaf for g in groups for s in g.slices if s.leaf.startswith("params/head")} == {"params/head/kernel"}


def test_depthwise_conv_ties_input_to_output_channels():
  fn, variables, x = own("depthwise")
  stem = group_with(graph.channel_groups(fn, variables, x), "params/stem/kernel", 3)
  assert {"params/dw/kernel", "params/bn1/scale", "params/pw/kernel"} <= stem.leaves()
  assert trivial("params/dw/kernel", 3, 8) in stem.slices


def test_channel_multiplier_gives_each_input_channel_a_block_of_outputs():
  fn, variables, x = own("depthwise_x2")
  groups = graph.channel_groups(fn, variables, x)
  stem = group_with(groups, "params/stem/kernel", 3)
  # output channel o of the depthwise conv reads input channel o // 2
  assert graph.Slice("params/dw/kernel", 3, tuple((2 * c, 2 * c + 1) for c in range(8))) in stem.slices
  (within,) = [g for g in groups if g.size == 2]   # the multiplier's index, the same in every group
  assert graph.Slice("params/bn1/scale", 0, tuple(tuple(range(m, 16, 2)) for m in range(2))) in within.slices


# --- plain JAX and NNX ------------------------------------------------------------------------------

def mlp(params, x):
  return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"]


def test_plain_jax_function_of_a_params_dict():
  params = {"w1": jnp.ones((5, 6)), "b1": jnp.ones(6), "w2": jnp.ones((6, 3))}
  x = jnp.ones((2, 5))
  (g,) = graph.channel_groups(mlp, params, x)
  assert g == graph.Group(6, (trivial("b1", 0, 6), trivial("w1", 1, 6), trivial("w2", 0, 6)))
  narrow_fn, narrow_params = graph.shrink(mlp, params, [g], [np.arange(6) % 3 == 0])
  assert jax.tree.map(jnp.shape, narrow_params) == {"w1": (5, 2), "b1": (2,), "w2": (2, 3)}
  grads = jax.grad(lambda p: narrow_fn(p, x).sum())(narrow_params)   # a narrow ticket can be retrained
  np.testing.assert_allclose(grads["b1"], [6.0, 6.0])   # d/db1 of sum(relu(.) @ w2) = rows of w2 summed


def test_channels_summed_with_an_input_are_in_no_group():
  def fn(params, x):  # a residual connection straight from the input: its width is fixed
    return jax.nn.relu(x @ params["w1"]) @ params["w2"] + x
  params = {"w1": jnp.ones((5, 6)), "w2": jnp.ones((6, 5))}
  (g,) = graph.channel_groups(fn, params, jnp.ones((2, 5)))
  assert g.leaves() == {"w1", "w2"} and g.size == 6


@pytest.mark.parametrize("mix", [lambda h: h - h.mean(-1, keepdims=True), lambda h: jnp.sort(h, axis=-1)])
def test_channels_mixed_along_their_axis_are_in_no_group(mix):
  """A mean over the channels (LayerNorm's) or an operation without a rule (sort) fixes the width."""
  params = {"w1": jnp.ones((5, 6)), "w2": jnp.ones((6, 3)), "w3": jnp.ones((3, 2))}
  fn = lambda p, x: jax.nn.relu(mix(x @ p["w1"]) @ p["w2"]) @ p["w3"]
  (g,) = graph.channel_groups(fn, params, jnp.ones((2, 5)))
  assert g.leaves() == {"w2", "w3"}


def test_nnx_model_through_split_and_merge():
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1, self.l2 = nnx.Linear(5, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.l1(x)))
  graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
  fn = lambda s, x: nnx.merge(graphdef, s)(x)
  x = jax.random.normal(jax.random.key(0), (2, 5))
  (g,) = graph.channel_groups(fn, state, x)
  assert {s.leaf.split("/")[0] for s in g.slices} == {"l1", "l2"} and g.size == 6
  assert_shrinks(fn, state, x, [g], other_batch=True)


def test_keep_of_the_wrong_shape_or_empty_is_refused():
  params = {"w1": jnp.ones((5, 6)), "b1": jnp.ones(6), "w2": jnp.ones((6, 3))}
  groups = graph.channel_groups(mlp, params, jnp.ones((2, 5)))
  with pytest.raises(ValueError, match="keeps no channel"):
    graph.shrink(mlp, params, groups, [np.zeros(6, bool)])
  with pytest.raises(ValueError, match="shape"):
    graph.mask(params, groups, [np.ones(5, bool)])
  with pytest.raises(ValueError, match="1 groups"):
    graph.narrow(params, groups, [])
