"""Structured criteria on channel groups, against scores computed by hand from each group's wiring.

The MLP x -> relu(x w1 + b1) -> relu(. w2) -> . w3 has two groups: the 4 hidden units of layer 1 (w1's
columns, b1, w2's rows) and the 3 of layer 2 (w2's columns, w3's rows); w3's outputs reach the output.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax.sparsity import graph, group_criteria, masks


def mlp(params, x):
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  return jax.nn.relu(h @ params["w2"]) @ params["w3"]


def mlp_params(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"w1": (3, 4), "b1": (4,), "w2": (4, 3), "w3": (3, 2)}
  return {k: jnp.asarray(rng.normal(size=shape), jnp.float32) for k, shape in shapes.items()}


X = jnp.asarray(np.random.default_rng(9).normal(size=(5, 3)), jnp.float32)


def mlp_groups(params):
  hidden1, hidden2 = graph.channel_groups(mlp, params, X)
  assert (hidden1.size, hidden2.size) == (4, 3) and hidden1.leaves() == {"w1", "b1", "w2"}
  return [hidden1, hidden2]


@pytest.mark.parametrize("criterion,power", [("l1", 1), ("l2", 2)])
def test_norms_sum_the_producer_filter_and_the_consumer_rows(criterion, power):
  p = {k: np.asarray(v) for k, v in mlp_params().items()}
  got = group_criteria.group_scores(mlp_params(), mlp_groups(mlp_params()), criterion)
  a = lambda w: np.abs(w) ** power
  hidden1 = [a(p["w1"][:, c]).sum() + a(p["w2"][c, :]).sum() for c in range(4)]   # b1: not a kernel
  hidden2 = [a(p["w2"][:, c]).sum() + a(p["w3"][c, :]).sum() for c in range(3)]
  np.testing.assert_allclose(got[0], hidden1, rtol=1e-6)
  np.testing.assert_allclose(got[1], hidden2, rtol=1e-6)


def test_l1_filter_reads_only_the_producers_output_filters():
  p = {k: np.asarray(v) for k, v in mlp_params().items()}
  got = group_criteria.group_scores(mlp_params(), mlp_groups(mlp_params()), "l1_filter")
  np.testing.assert_allclose(got[0], np.abs(p["w1"]).sum(0), rtol=1e-6)   # w1's columns; not w2's rows
  np.testing.assert_allclose(got[1], np.abs(p["w2"]).sum(0), rtol=1e-6)


def with_l1(hidden1, hidden2):
  """MLP params whose group L1 scores are exactly hidden1 and hidden2: one non-zero entry per channel."""
  w1, w2, w3 = np.zeros((3, 4)), np.zeros((4, 3)), np.zeros((3, 2))
  w1[0] = hidden1
  w3[:, 0] = hidden2
  return {"w1": jnp.asarray(w1, jnp.float32), "b1": jnp.ones(4), "w2": jnp.asarray(w2, jnp.float32),
          "w3": jnp.asarray(w3, jnp.float32)}


def test_global_ranks_all_groups_together_and_layerwise_each_group():
  params = with_l1([40.0, 10.0, 30.0, 20.0], [2.0, 3.0, 1.0])
  groups = mlp_groups(params)
  # ratio 3/7: 3 of the 7 channels go. Globally, the 3 smallest are all of hidden2: its largest stays.
  keep = group_criteria.channel_keep(params, groups, 3 / 7, "l1", "global")
  np.testing.assert_array_equal(keep[0], [True, True, True, True])
  np.testing.assert_array_equal(keep[1], [False, True, False])
  # Per group: round(3/7 * 4) = 2 of hidden1 (10, 20) and round(3/7 * 3) = 1 of hidden2 (1).
  keep = group_criteria.channel_keep(params, groups, 3 / 7, "l1", "layerwise")
  np.testing.assert_array_equal(keep[0], [True, False, True, False])
  np.testing.assert_array_equal(keep[1], [True, True, False])


def test_ties_go_by_position_and_no_group_is_emptied():
  params = with_l1([5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0])
  groups = mlp_groups(params)
  keep = group_criteria.channel_keep(params, groups, 2 / 7, "l1")
  np.testing.assert_array_equal(keep[0], [False, False, True, True])   # the first two by position
  np.testing.assert_array_equal(keep[1], [True, True, True])
  for scope in group_criteria.SCOPES:   # ratio 1: exactly one channel per group, its first largest
    keep = group_criteria.channel_keep(with_l1([1.0, 4.0, 4.0, 2.0], [3.0, 1.0, 2.0]), groups, 1.0, "l1", scope)
    np.testing.assert_array_equal(keep[0], [False, True, False, False])
    np.testing.assert_array_equal(keep[1], [True, False, False])


def test_mask_is_an_ordinary_mask_pytree_zeroing_every_member():
  params = with_l1([40.0, 10.0, 30.0, 20.0], [2.0, 3.0, 1.0])
  m = group_criteria.channel_mask(params, mlp_groups(params), 3 / 7, "l1", "layerwise")
  assert jax.tree.structure(m) == jax.tree.structure(params)
  np.testing.assert_array_equal(m["b1"], [1, 0, 1, 0])
  np.testing.assert_array_equal(m["w1"], np.tile([1, 0, 1, 0], (3, 1)))
  np.testing.assert_array_equal(m["w2"], np.asarray([1, 0, 1, 0])[:, None] * np.asarray([1, 1, 0])[None, :])
  np.testing.assert_array_equal(m["w3"], np.tile([1, 1, 0], (2, 1)).T)
  # kernels: w1 loses 2 x 3, w2 loses 12 - 2 x 2, w3 loses 2, of 12 + 12 + 6
  assert masks.sparsity(m) == pytest.approx((6 + 8 + 2) / 30)


class TwoConvBN(nn.Module):
  """conv -> BN -> relu, twice, a mean over space, a Dense head: one group per conv/BN pair."""

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate((3, 4)):
      x = nn.relu(nn.BatchNorm(use_running_average=True, name=f"bn{i}")(nn.Conv(width, (3, 3), name=f"conv{i}")(x)))
    return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


def test_bn_scale_reads_the_groups_batchnorm_gamma():
  model, x = TwoConvBN(), jnp.ones((1, 4, 4, 2))
  variables = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), jax.eval_shape(model.init, jax.random.key(0), x))
  variables["params"]["bn0"]["scale"] = jnp.asarray([0.5, -0.1, 0.3])
  variables["params"]["bn1"]["scale"] = jnp.asarray([0.2, 0.05, -0.4, 0.6])
  groups = graph.channel_groups(model.apply, variables, x)
  assert len(groups) == 2
  by_bn = {next(s.leaf for s in g.slices if s.leaf.endswith("scale")): i for i, g in enumerate(groups)}
  scores = group_criteria.group_scores(variables, groups, "bn_scale")
  np.testing.assert_allclose(scores[by_bn["params/bn0/scale"]], [0.5, 0.1, 0.3], rtol=1e-6)
  # 3 of 7 go globally: |gamma| 0.05, 0.1, 0.2
  keep = group_criteria.channel_keep(variables, groups, 3 / 7, "bn_scale")
  np.testing.assert_array_equal(keep[by_bn["params/bn0/scale"]], [True, False, True])
  np.testing.assert_array_equal(keep[by_bn["params/bn1/scale"]], [False, False, True, True])
  m = graph.channel_mask(variables, groups, keep)["params"]
  np.testing.assert_array_equal(m["conv1"]["kernel"][..., 1, :], 0)   # bn0's channel 1 is conv1's input 1
  np.testing.assert_array_equal(m["head"]["kernel"][:2], 0)


def test_groups_without_a_batchnorm_are_left_whole_by_bn_scale():
  params = mlp_params()
  keep = group_criteria.channel_keep(params, mlp_groups(params), 0.5, "bn_scale")
  assert all(k.all() for k in keep)


def loss(params):
  return jnp.sum(mlp(params, X) ** 2)


def test_taylor_is_the_first_order_loss_change_of_removing_the_channel():
  params = mlp_params(1)
  grads = jax.jit(jax.grad(loss))(params)
  got = group_criteria.group_scores(params, mlp_groups(params), "taylor", grads)
  p, g = ({k: np.asarray(v, np.float64) for k, v in t.items()} for t in (params, grads))
  hidden1 = [abs((p["w1"][:, c] * g["w1"][:, c]).sum() + p["b1"][c] * g["b1"][c] + (p["w2"][c] * g["w2"][c]).sum())
             for c in range(4)]
  np.testing.assert_allclose(got[0], hidden1, rtol=1e-5)
  # The same number as the derivative of the loss along the path that scales channel c of hidden2 to 0.
  def scaled(t):   # t[c] scales channel c of hidden2 (w2's column, w3's row) by 1 - t[c]
    return loss({**params, "w2": params["w2"] * (1 - t)[None, :], "w3": params["w3"] * (1 - t)[:, None]})
  np.testing.assert_allclose(got[1], np.abs(jax.jit(jax.grad(scaled))(jnp.zeros(3))), rtol=1e-4)


def test_taylor_reads_only_the_leaves_grads_holds():
  params = {"w1": jnp.ones((3, 4)), "b1": jnp.ones(4), "w2": jnp.ones((4, 3)), "w3": jnp.ones((3, 2))}
  grads = {"w1": jnp.full((3, 4), 2.0)}   # b1, w2 (the consumer rows) left out
  got = group_criteria.group_scores(params, mlp_groups(params), "taylor", grads)
  np.testing.assert_allclose(got[0], [6.0] * 4)
  assert got[1] is None


@pytest.mark.parametrize("kwargs,message", [
    (dict(criterion="l3"), "allowed: l1, l2, l1_filter, bn_scale, taylor"),
    (dict(criterion="taylor"), "grads are needed"),
    (dict(criterion="l1", ratio=1.5), r"ratio=1.5 is outside \[0, 1\]"),
    (dict(criterion="l1", scope="per_layer"), "allowed: global, layerwise")])
def test_bad_arguments_are_refused(kwargs, message):
  params = mlp_params()
  with pytest.raises(ValueError, match=message):
    group_criteria.channel_keep(params, mlp_groups(params), **{"ratio": 0.5, **kwargs})
