"""Networks shrunk by channel groups as Flax modules, FLOP and parameter counts, and the Early-Bird detector."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import masks, models
from lth_jax.errors import UserError
from lth_jax.metrics import compression
from lth_jax.models import shrunk
from lth_jax.sparsity import early_bird, graph

VGG_WIDTHS = (4, 4, 4, 4, 4, 4, 4, 4)  # vgg11 at 4 channels per conv: 32 prunable channels


def random_variables(model, x, seed=0):
  """Random params and non-trivial running statistics, without `init`'s slow eager random draws."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.3, s.dtype), shapes["params"])
  variables = {"params": params}
  if "batch_stats" in shapes:
    def stat(path, s):
      is_var = masks.leaf_name(path).endswith("var")
      return jnp.asarray(rng.uniform(0.5, 2.0, s.shape) if is_var else rng.normal(size=s.shape) * 0.2, s.dtype)
    variables["batch_stats"] = jax.tree_util.tree_map_with_path(stat, shapes["batch_stats"])
  return variables


CASES = [
    # 64x64: the output layer reads a 2x2xC map, so its rows are channels interleaved with positions.
    ("vgg11", {"widths": (4, 6, 8, 4, 6, 8, 4, 6)}, (2, 64, 64, 3)),
    ("resnet20", {"width": 8}, (2, 8, 8, 3)),
    ("resnet20", {"width": 4, "bottleneck": True}, (2, 8, 8, 3)),
]


def unoptimized(fn, *args):
  """fn(*args) compiled without XLA's slow optimizations: tests stay fast."""
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


@pytest.mark.parametrize("name,kwargs,shape", CASES)
def test_shrunk_model_computes_the_masked_model(name, kwargs, shape):
  """models.shrunk.Shrunk: the zoo with every other channel of every group cut out, residual streams too."""
  model = models.get(name, num_classes=10, **kwargs)
  x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
  variables = random_variables(model, x)
  groups = shrunk.groups(model, variables, x)
  keep = [np.arange(g.size) % 2 == 1 for g in groups]
  narrow = shrunk.Shrunk(shrunk.Network(model), groups, tuple(int(k.sum()) for k in keep))
  new_variables = graph.narrow(variables, groups, keep)
  shapes = jax.eval_shape(lambda: narrow.init(jax.random.key(0), x))
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, new_variables)
  mask = graph.channel_mask(variables, groups, keep)["params"]
  masked = dict(variables, params=masks.apply(variables["params"], mask))

  train = name == "resnet20" and not kwargs.get("bottleneck")   # training mode on one case: compiling dominates

  def both(a, b):   # eval mode; training mode, BatchNorm on batch statistics, its running ones updated
    return [(m.apply(v, x, train=False), m.apply(v, x, train=True, mutable=["batch_stats"]) if train else None)
            for m, v in ((model, a), (narrow, b))]
  (expected, trained), (got, got_trained) = unoptimized(both, masked, new_variables)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
  assert np.abs(np.asarray(expected)).max() > 1e-2  # the outputs are not trivially zero
  if train:
    np.testing.assert_allclose(got_trained[0], trained[0], atol=1e-4, rtol=1e-4)
    updated = graph.narrow({**variables, **trained[1]}, groups, keep)["batch_stats"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), got_trained[1]["batch_stats"],
                 updated)

  # Half the channels are gone, and the masked and the narrow network count alike.
  assert compression.count_nonzero(variables["params"], mask) == compression.count_params(new_variables)
  input_shape = shape[1:]
  assert (compression.flops(model, variables, input_shape, mask)
          == compression.flops(narrow, new_variables, input_shape)
          < compression.flops(model, variables, input_shape))


def test_bad_widths():
  with pytest.raises(UserError, match="config.model.widths"):
    models.get("vgg11", num_classes=10, widths=(4, 4))
  with pytest.raises(UserError, match="config.model.block_widths"):
    models.get("resnet20", num_classes=10, block_widths=((4, 4),) * 9)  # basic blocks have one inner width


class Toy(nn.Module):
  """3x3 SAME conv to 4, 3x3 VALID stride-2 conv to 6, flatten, dense to 5."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), padding="SAME", name="a")(x))
    x = nn.relu(nn.Conv(6, (3, 3), strides=2, padding="VALID", name="b")(x))
    return nn.Dense(5, name="c")(x.reshape((x.shape[0], -1)))


def test_counts_of_a_toy_network():
  model, input_shape = Toy(), (8, 8, 3)
  params = random_variables(model, jnp.zeros((1, *input_shape)))["params"]
  # Params: kernels and biases. FLOPs: H_out*W_out*k*k*C_in*C_out per conv (8x8 SAME, then (8-3)//2+1 = 3),
  # in*out for the dense layer on the 3*3*6 = 54 flattened features.
  assert compression.count_params(params) == (27 * 4 + 4) + (9 * 4 * 6 + 6) + (54 * 5 + 5) == 609
  dense = 8 * 8 * 9 * 3 * 4 + 3 * 3 * 9 * 4 * 6 + 54 * 5
  assert compression.flops(model, params, input_shape) == dense == 9126

  mask = masks.init(params)
  mask["a"]["kernel"] = mask["a"]["kernel"].at[:, :, :, :2].set(0)  # 54 of 108 weights
  mask["b"]["kernel"] = mask["b"]["kernel"].at[0].set(0)  # 72 of 216
  mask["c"]["bias"] = jnp.zeros(5)  # biases count as parameters, not as multiply-adds
  nonzero = 8 * 8 * 54 + 3 * 3 * 144 + 270
  assert compression.flops(model, params, input_shape, mask) == nonzero
  assert compression.count_nonzero(params, mask) == 609 - 54 - 72 - 5
  assert compression.compression_ratio(params, mask) == 609 / (609 - 131)
  assert compression.theoretical_speedup(model, params, input_shape, mask) == dense / nonzero
  seconds = compression.time_inference(jax.jit(model.apply), {"params": params}, jnp.zeros((2, *input_shape)), 3)
  assert 0 < seconds < 10


def test_vgg11_flops_by_formula():
  w = (3,) + VGG_WIDTHS
  sides = (32, 16, 8, 8, 4, 4, 2, 2)  # a max-pool halves the side after convs 0, 1, 3 and 5
  expected = sum(s * s * 9 * cin * cout for s, cin, cout in zip(sides, w, w[1:])) + w[-1] * 10
  model = models.get("vgg11", num_classes=10, widths=VGG_WIDTHS)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  assert compression.flops(model, params, (32, 32, 3)) == expected


def channel_mask(bits):
  bits = np.asarray(bits, bool)
  return {"bn_0": bits[:10], "bn_1": bits[10:]}


def test_early_bird_fires_when_the_last_window_masks_agree():
  rng = np.random.default_rng(0)
  base = rng.random(20) < 0.5
  near = base.copy()
  near[3] ^= True  # distance 1/20 = 0.05 from base
  far = [rng.random(20) < 0.5 for _ in range(3)]
  sequence = [channel_mask(m) for m in far + [base, near, base, base, base]]
  detector = early_bird.EarlyBird(window=3, epsilon=0.1)
  fired = [detector.update(m) for m in sequence]
  # Epoch 5 compares with epochs 2..4 (far, base, near): no. Epoch 6 with 3..5, all within 0.05: yes.
  assert fired == [False] * 6 + [True, True] and detector.ticket_epoch == 6
  assert all(math.isnan(d) for d in detector.distances[:3]) and detector.distances[6] == 0.05
  assert early_bird.first_ticket(sequence, window=3, epsilon=0.1) == (6, detector.distances)


def test_early_bird_needs_window_previous_masks_and_a_strict_epsilon():
  same = channel_mask(np.arange(20) % 3 == 0)
  assert early_bird.first_ticket([same] * 6, window=4)[0] == 4  # not at epoch 3: only 3 earlier masks
  two_off = channel_mask((np.arange(20) % 3 == 0) ^ (np.arange(20) < 2))  # distance 2/20, exactly epsilon
  assert early_bird.first_ticket([same, two_off] * 4, window=1, epsilon=0.1)[0] is None
  assert early_bird.first_ticket([same, two_off] * 4, window=1, epsilon=0.11)[0] == 1
