"""Channel pruning, narrower rebuilt models, FLOP and parameter counts, and the Early-Bird detector."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import masks, models
from lth_jax.metrics import compression
from lth_jax.sparsity import early_bird, structured
from lth_jax.errors import UserError

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


def set_gammas(params, values):
  """Copy of params with BN layer bn's scale set to values[bn]."""
  params = jax.tree.map(lambda a: a, params)  # fresh dicts, shared leaves
  for bn, v in values.items():
    layer = params
    for key in bn.split("/"):
      layer = layer[key]
    layer["scale"] = jnp.asarray(v, jnp.float32)
  return params


@pytest.fixture(scope="module")
def vgg_params():
  model = models.get("vgg11", num_classes=10, widths=VGG_WIDTHS)
  return random_variables(model, jnp.zeros((1, 32, 32, 3)))["params"]


def kept(keep):
  return {bn: int(k.sum()) for bn, k in keep.items()}


def test_channel_masks_remove_the_exact_global_count(vgg_params):
  # Channel c of layer i has |gamma| = 8c + i (negated for odd layers: the score is |gamma|), so the k
  # smallest are channel 0 of every layer, then channel 1 of layers 0, 1, ...
  gammas = {f"bn_{i}": (-1) ** i * (8.0 * np.arange(4) + i) for i in range(8)}
  params = set_gammas(vgg_params, gammas)
  assert list(structured.bn_scales(params)) == [f"bn_{i}" for i in range(8)]
  keep = structured.channel_masks(params, 0.3, "vgg11")  # round(0.3 * 32) = 10 removed
  assert kept(keep) == {f"bn_{i}": 2 if i < 2 else 3 for i in range(8)}
  assert all(not k[0] for k in keep.values()) and not keep["bn_1"][1] and keep["bn_2"][1]
  assert sum(kept(structured.channel_masks(params, 0.0)).values()) == 32


def test_ties_go_by_network_order_and_every_layer_keeps_one(vgg_params):
  params = set_gammas(vgg_params, {f"bn_{i}": np.full(4, 0.5) for i in range(8)})
  keep = structured.channel_masks(params, 3 / 32)
  np.testing.assert_array_equal(keep["bn_0"], [False, False, False, True])
  assert sum(kept(keep).values()) == 29
  # Removing 4 would empty bn_0: its largest (first, on ties) channel stays, so only 3 go.
  keep = structured.channel_masks(params, 4 / 32)
  np.testing.assert_array_equal(keep["bn_0"], [True, False, False, False])
  assert sum(kept(keep).values()) == 29
  # bn_5 holds the 4 smallest scales; ratio 1 leaves exactly one channel, the largest, everywhere.
  gammas = {f"bn_{i}": np.arange(4) + (0.0 if i == 5 else 10.0) for i in range(8)}
  keep = structured.channel_masks(set_gammas(vgg_params, gammas), 4 / 32)
  np.testing.assert_array_equal(keep["bn_5"], [False, False, False, True])
  assert kept(structured.channel_masks(params, 1.0)) == {f"bn_{i}": 1 for i in range(8)}


def test_l1_filter_masks_keep_the_largest_filters(vgg_params):
  keep = structured.l1_filter_masks(vgg_params, 0.5)
  for bn, k in keep.items():
    kernel = np.asarray(vgg_params[bn.replace("bn", "conv")]["kernel"])
    norms = np.abs(kernel).sum(axis=(0, 1, 2))
    assert k.sum() == 2 and norms[k].min() > norms[~k].max()
  # L1, not the signed sum: a filter of large negative weights is the one kept.
  kernel = np.full((3, 3, 4, 4), 0.1, np.float32)
  kernel[..., 2] = -1.0
  params = dict(vgg_params, conv_7={"kernel": jnp.asarray(kernel)})
  np.testing.assert_array_equal(structured.l1_filter_masks(params, 0.75)["bn_7"], [False, False, True, False])
  assert kept(structured.l1_filter_masks(params, 1.0)) == {f"bn_{i}": 1 for i in range(8)}


def test_resnet_coupling_rule():
  for bottleneck, inner in ((False, ["bn1"]), (True, ["bn1", "bn2"])):
    model = models.get("resnet20", num_classes=10, width=8, bottleneck=bottleneck)
    params = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]
    blocks = sorted((k for k in params if k.startswith("stage")), key=structured.network_order)
    assert structured.prunable_bns(params, "resnet") == [f"{b}/{bn}" for b in blocks for bn in inner]
  params = random_variables(models.get("resnet20", num_classes=10, width=8), jnp.zeros((1, 32, 32, 3)))["params"]
  with pytest.raises(ValueError, match="residual"):  # a block output channel is summed with the shortcut
    structured.expand_channel_masks(params, {"stage1_block0/bn2": np.arange(8) > 0})
  assert "stem_bn" not in structured.channel_masks(params, 0.5)


def test_slimming_penalty_is_l1_of_the_prunable_scales():
  model = models.get("resnet20", num_classes=10, width=8)
  params = random_variables(model, jnp.zeros((1, 32, 32, 3)))["params"]
  expected = sum(float(s.sum()) for s in structured.bn_scales(params).values())
  np.testing.assert_allclose(structured.slimming_penalty(params), expected, rtol=1e-6)
  grads = jax.jit(jax.grad(structured.slimming_penalty))(params)
  scale = params["stage2_block1"]["bn1"]["scale"]
  np.testing.assert_array_equal(grads["stage2_block1"]["bn1"]["scale"], jnp.sign(scale))
  assert not np.any(grads["stem_bn"]["scale"]) and not np.any(grads["stage1_block0"]["bn2"]["scale"])


CASES = [
    # 64x64: the output layer reads a 2x2xC map, so its rows are channels interleaved with positions.
    ("vgg11", {"widths": (4, 6, 8, 4, 6, 8, 4, 6)}, (2, 64, 64, 3)),
    ("resnet20", {"width": 8}, (2, 32, 32, 3)),
    ("resnet20", {"width": 4, "bottleneck": True}, (2, 16, 16, 3)),
]


def apply_both(model_a, variables_a, model_b, variables_b, x):
  """Both models in eval mode, compiled together without XLA's slow optimizations: tests stay fast."""
  def both(a, b):
    return model_a.apply(a, x, train=False), model_b.apply(b, x, train=False)
  compiled = jax.jit(both).lower(variables_a, variables_b).compile({"xla_backend_optimization_level": 0})
  return compiled(variables_a, variables_b)


@pytest.mark.parametrize("name,kwargs,shape", CASES)
def test_rebuilt_model_computes_the_masked_model(name, kwargs, shape):
  model = models.get(name, num_classes=10, **kwargs)
  x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
  variables = random_variables(model, x)
  keep = structured.channel_masks(variables["params"], 0.5, name)
  mask = structured.expand_channel_masks(variables["params"], keep)
  masked = dict(variables, params=masks.apply(variables["params"], mask))

  new_kwargs, new_variables = structured.rebuild(name, kwargs, variables, keep)
  narrow = models.get(name, num_classes=10, **new_kwargs)
  shapes = jax.eval_shape(lambda: narrow.init(jax.random.key(0), x))
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, new_variables)
  expected, got = apply_both(model, masked, narrow, new_variables, x)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
  assert np.abs(np.asarray(expected)).max() > 1e-2  # the outputs are not trivially zero

  # Half the prunable channels are gone, and the masked and the narrow network count alike.
  removed = sum(int((~k).sum()) for k in keep.values())
  assert removed == round(0.5 * sum(k.size for k in keep.values()))
  assert compression.count_nonzero(variables["params"], mask) == compression.count_params(new_variables)
  input_shape = shape[1:]
  assert (compression.flops(model, variables, input_shape, mask)
          == compression.flops(narrow, new_variables, input_shape)
          < compression.flops(model, variables, input_shape))


def test_rebuild_keeping_everything_is_the_original_model():
  model = models.get("resnet20", num_classes=10, width=4, bottleneck=True)
  variables = random_variables(model, jnp.zeros((1, 16, 16, 3)))
  kwargs, new = structured.rebuild("resnet20", {"width": 4, "bottleneck": True}, variables,
                                   structured.channel_masks(variables["params"], 0.0))
  assert kwargs["block_widths"] == ((4, 4),) * 2 + ((8, 8),) * 2 + ((16, 16),) * 2
  jax.tree.map(np.testing.assert_array_equal, new, variables)


def test_unsupported_models_and_bad_widths():
  with pytest.raises(ValueError, match="model_name='conv2' cannot be rebuilt"):
    structured.rebuild("conv2", {}, {"params": {}}, {})
  with pytest.raises(UserError, match="config.model.widths"):
    models.get("vgg11", num_classes=10, widths=(4, 4))
  with pytest.raises(UserError, match="config.model.block_widths"):
    models.get("resnet20", num_classes=10, block_widths=((4, 4),) * 9)  # basic blocks have one inner width
  with pytest.raises(ValueError, match=r"ratio=1.5 is outside \[0, 1\]"):
    structured.channel_masks({"bn_0": {"scale": jnp.ones(2)}}, 1.5)


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
