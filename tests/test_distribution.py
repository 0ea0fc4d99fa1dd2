"""Per-layer sparsity distributions (lth_jax.sparsity.distribution) and exact-count selection, checked
against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax.sparsity import distribution, pruning, select
from lth_jax.sparsity import masks as masks_lib
from tests.helpers import leaves_equal

SHAPES = [(4, 8), (8, 8), (8, 2)]   # sizes 32, 64, 16 (112); raw ERK densities 12/32, 16/64, 10/16
NAMES = ["a/kernel", "b/kernel", "output/kernel"]


def test_erk_half_density_equals_the_formula():
  # eps = 56 / (12 + 16 + 10) ; densities eps * (sum dims / prod dims)
  eps = 56 / 38
  assert distribution.erk_densities(SHAPES, 0.5) == pytest.approx([eps * 12 / 32, eps * 16 / 64, eps * 10 / 16])
  # real counts 17.68, 23.58, 14.74: floors 17, 23, 14 (54); the two largest remainders get one more
  assert distribution.layer_counts("erk", SHAPES, NAMES, 56) == [18, 23, 15]


def test_erk_layer_over_density_one_is_kept_dense_and_the_rest_rescaled():
  # keep 90: eps = 90/38 would give the output layer 1.48 > 1, so it is dense (16) and
  # eps = (90 - 16) / (12 + 16) for the others: real counts 31.71, 42.29
  eps = 74 / 28
  assert distribution.erk_densities(SHAPES, 90 / 112) == pytest.approx([eps * 12 / 32, eps * 16 / 64, 1.0])
  assert distribution.layer_counts("erk", SHAPES, NAMES, 90) == [32, 42, 16]


def test_uniform_map_and_global_counts():
  # density 0.25: 8, 16, 4 exactly; keep 29 adds the one extra weight to the largest remainder
  assert distribution.layer_counts("uniform", SHAPES, NAMES, 28) == [8, 16, 4]
  assert sum(distribution.layer_counts("uniform", SHAPES, NAMES, 29)) == 29
  assert distribution.layer_counts("global", SHAPES, NAMES, 28) is None
  # output at sparsity 0.5 (8 of 16), the others at the overall target 1 - 28/112 = 0.75
  layer_map = distribution.parse_map(("output/*=0.5",))
  assert distribution.layer_counts("map", SHAPES, NAMES, 28, layer_map) == [8, 16, 8]
  with pytest.raises(ValueError, match=r"entry 'output/\*=1.5' must read 'PATTERN=SPARSITY'"):
    distribution.parse_map(("output/*=1.5",))


def test_keep_counts_keeps_exactly_the_highest_alive_scores_per_layer_and_globally():
  scores = {"a": jnp.array([[5., 1., 3.], [2., 2., 9.]]), "b": jnp.array([[4., 8.], [0., 7.]])}
  masks = {"a": jnp.array([[1., 1., 1.], [1., 1., 0.]]), "b": jnp.ones((2, 2))}
  which = {"a": True, "b": True}
  per_layer = select.keep_counts(scores, masks, [3, 1], which)
  # a: alive scores 5 1 3 2 2 (the 9 is pruned); the 3 highest are 5, 3 and the later 2 (ties: earlier goes)
  np.testing.assert_array_equal(per_layer["a"], [[1, 0, 1], [0, 1, 0]])
  np.testing.assert_array_equal(per_layer["b"], [[0, 1], [0, 0]])
  together = select.keep_counts(scores, masks, 4, which)   # 8 7 5 4 over both
  np.testing.assert_array_equal(together["a"], [[1, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(together["b"], [[1, 1], [0, 1]])
  traced = jax.jit(lambda k: select.keep_counts(scores, masks, k, which))(jnp.array([3, 1]))
  assert masks_lib.count(traced, which) == masks_lib.count(per_layer, which)


@pytest.mark.parametrize("kind", ["erk", "uniform", "global"])
def test_prune_distributed_rescores_on_the_exponential_schedule_per_layer(kind):
  """SynFlow's iterations under a distribution: k scorings, every layer on its own exponential schedule,
  and the one-shot counts (and, for a mask-independent score, the one-shot mask) at the end."""
  params = {name.split("/")[0]: {"kernel": jnp.arange(np.prod(s), dtype=jnp.float32).reshape(s) + 1.0}
            for name, s in zip(NAMES, SHAPES)}
  masks = masks_lib.init(params)
  seen = []

  def magnitude_recording(params, masks, context):
    seen.append([int(m.sum()) for m in jax.tree.leaves(masks)])
    return jax.tree.map(jnp.abs, params)
  once = pruning.prune_distributed("magnitude", params, masks, 0.9, kind)
  four = pruning.prune_distributed(magnitude_recording, params, masks, 0.9, kind, iterations=4)
  assert len(seen) == 4
  assert leaves_equal(once, four)
  start, end = [int(np.prod(s)) for s in SHAPES], [int(m.sum()) for m in jax.tree.leaves(once)]
  # Synaptic-Flow's prune_loop count: N - int((1 - d^(i/k)) N) of N stay, d the density reached
  if kind == "global":   # the network's count follows the schedule; the layers split it by score
    assert [sum(c) for c in seen[1:]] == [112 - int((1 - (1 - 0.9) ** (i / 4)) * 112) for i in (1, 2, 3)]
  else:
    assert seen[1:] == [[a - int((1 - (b / a) ** (i / 4)) * a) for a, b in zip(start, end)] for i in (1, 2, 3)]


def test_keep_highest_equals_a_stable_sort_with_ties_signed_zeros_and_infinities():
  """The sort-free selection keeps what ranking by a stable argsort keeps, position deciding ties."""
  def by_sort(scores, alive, k):
    # ascending by (alive, score, position): dead entries below every alive one, so exactly
    # min(k, alive) stay even where an alive score is -inf
    order = np.lexsort((np.arange(scores.size), scores, alive))
    return alive & (np.argsort(order, kind="stable") >= order.size - k)
  rng = np.random.default_rng(3)
  pick = jax.jit(select.keep_highest)
  for trial in range(200):
    n = int(rng.integers(1, 50))
    scores = (rng.choice([0.0, -0.0, 1.0, -1.0, 0.5, np.inf, -np.inf], n) if trial % 2
              else rng.standard_normal(n)).astype(np.float32)
    alive, k = rng.random(n) < rng.random(), int(rng.integers(0, n + 3))
    np.testing.assert_array_equal(np.asarray(pick(scores, alive, k)), by_sort(scores, alive, k))
  # all tied: the last k alive positions stay
  kept = np.asarray(pick(np.ones(6, np.float32), np.array([1, 1, 0, 1, 1, 1], bool), 3))
  np.testing.assert_array_equal(kept, [0, 0, 0, 1, 1, 1])


def test_prune_distributed_erk_reaches_the_exact_counts():
  params = {name.split("/")[0]: {"kernel": jnp.arange(np.prod(s), dtype=jnp.float32).reshape(s) + 1.0}
            for name, s in zip(NAMES, SHAPES)}
  masks = masks_lib.init(params)
  pruned = pruning.prune_distributed("magnitude", params, masks, 0.5, "erk")
  assert [row["remaining"] for row in masks_lib.layer_report(pruned)] == [18, 23, 15]
  # magnitude within each layer: the largest |w| stay (the last positions, as the weights increase)
  assert np.asarray(pruned["a"]["kernel"]).ravel().tolist() == [0] * 14 + [1] * 18
  # a second event removes round(0.5 * 56) = 28 more: ERK of keep 28, within the survivors
  again = pruning.prune_distributed("magnitude", params, pruned, 0.5, "erk")
  assert masks_lib.count(again) == (28, 112)
  assert [row["remaining"] for row in masks_lib.layer_report(again)] == distribution.layer_counts(
      "erk", SHAPES, NAMES, 28)


def test_first_layer_is_the_first_created_not_the_first_sorted():
  from lth_jax.models import resnet
  model = resnet.cifar_resnet(8, num_classes=3, width=4, bottleneck=False)   # the smallest of the family
  params = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)), train=False)["params"]
  which = masks_lib.prunable(params)
  sorted_first = next(name for (name, _), w in zip(masks_lib.named_leaves(params), jax.tree.leaves(which)) if w)
  assert sorted_first == "output/kernel"
  assert distribution.first_layer(params, which) == "stem_conv/kernel"


def test_uniform_first_dense_is_rigls_uniform():
  """rigl's uniform (get_sparsities_uniform over the masks its scripts make): the first layer unmasked
  and dense, every other layer at the target sparsity, the sparsity counted over those."""
  from lth_jax import experiment
  from lth_jax.methods import common
  from tests.helpers import small_config
  exp = experiment.build(small_config(**{"prune.distribution": "uniform_first_dense"}))
  # moons (2 features) through widths (16, 16) to 2 classes: kernels 2x16, 16x16, 16x2
  flags = {name: w for (name, _), w in zip(masks_lib.named_leaves(exp.init_params), jax.tree.leaves(exp.which))}
  assert not flags["hidden_0/kernel"] and flags["hidden_1/kernel"] and flags["output/kernel"]
  masks = common.prune(exp, exp.init_params, masks_lib.init(exp.init_params), 0.75, "test")
  kept = {name: int(np.asarray(m).sum()) for name, m in masks_lib.named_leaves(masks)}
  assert kept["hidden_0/kernel"] == 32                      # dense
  assert kept["hidden_1/kernel"] == 256 // 4 and kept["output/kernel"] == 32 // 4
  assert masks_lib.sparsity(masks, exp.which) == 0.75
