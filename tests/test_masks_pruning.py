import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import masks, pruning
from lth_jax.errors import UserError


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "hidden_0": {"kernel": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32), "bias": jnp.zeros(30)},
      "hidden_1": {"kernel": jnp.asarray(rng.normal(size=(30, 10)), jnp.float32), "bias": jnp.zeros(10)},
      "output": {"kernel": jnp.asarray(rng.normal(size=(10, 3)), jnp.float32), "bias": jnp.zeros(3)},
  }


def kernels(tree):
  return [tree[k]["kernel"] for k in ("hidden_0", "hidden_1", "output")]


def test_init_and_prunable_default_and_exclude():
  params = make_params()
  m = masks.init(params)
  assert jax.tree.structure(m) == jax.tree.structure(params)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(m), jax.tree.leaves(params)))
  assert all(bool(jnp.all(a == 1)) for a in jax.tree.leaves(m))
  which = masks.prunable(params)
  assert [which[k]["kernel"] for k in which] == [True] * 3
  assert [which[k]["bias"] for k in which] == [False] * 3
  no_output = masks.prunable(params, exclude=("output/*",))
  assert no_output["output"]["kernel"] is False and no_output["hidden_0"]["kernel"] is True


def test_global_magnitude_selects_exactly_the_smallest():
  params = make_params()
  total = 20 * 30 + 30 * 10 + 10 * 3
  m = pruning.magnitude(params, masks.init(params), 0.8, scope="global")
  remaining, n = masks.count(m)
  assert n == total and remaining == total - round(0.8 * total)
  # Same selection as torch's global_unstructured(L1Unstructured, amount=0.8): the k smallest |w| overall.
  flat = np.concatenate([np.abs(np.asarray(k)).ravel() for k in kernels(params)])
  expected_pruned = set(np.argsort(flat, kind="stable")[:round(0.8 * total)])
  flat_mask = np.concatenate([np.asarray(k).ravel() for k in kernels(m)])
  assert set(np.flatnonzero(flat_mask == 0)) == expected_pruned
  assert all(bool(jnp.all(m[k]["bias"] == 1)) for k in m)
  assert masks.sparsity(m) == pytest.approx(round(0.8 * total) / total)


def test_layerwise_magnitude_counts_per_layer_and_layer_scale():
  params = make_params()
  m = pruning.magnitude(params, masks.init(params), 0.5, scope="layerwise",
                        layer_scale={"output/*": 0.5})
  for name, size, fraction in (("hidden_0", 600, 0.5), ("hidden_1", 300, 0.5), ("output", 30, 0.25)):
    kept = np.asarray(m[name]["kernel"]).ravel()
    assert int(kept.sum()) == size - round(fraction * size)
    w = np.abs(np.asarray(params[name]["kernel"])).ravel()
    assert w[kept == 0].max() <= w[kept == 1].min()
  report = masks.layer_report(m)
  assert [r["layer"] for r in report] == ["hidden_0/kernel", "hidden_1/kernel", "output/kernel"]
  assert report[2]["remaining"] == 30 - round(0.25 * 30)


def test_pruning_is_cumulative_and_never_revives():
  params = make_params()
  m1 = pruning.magnitude(params, masks.init(params), 0.5)
  # Make the pruned weights the largest: they must stay pruned all the same.
  boosted = jax.tree.map(lambda p, mk: jnp.where(mk == 0, 100.0, p), params, m1)
  m2 = pruning.magnitude(boosted, m1, 0.5)
  r1, total = masks.count(m1)
  r2, _ = masks.count(m2)
  assert r1 == total - round(0.5 * total)
  assert r2 == r1 - round(0.5 * r1)
  for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2)):
    assert bool(jnp.all(b <= a))


def test_ties_still_remove_the_exact_count():
  params = jax.tree.map(jnp.ones_like, make_params())
  m = pruning.magnitude(params, masks.init(params), 0.3)
  remaining, total = masks.count(m)
  assert total - remaining == round(0.3 * total)


def test_random_pruning_counts_keys_and_alive_only():
  params = make_params()
  m0 = pruning.magnitude(params, masks.init(params), 0.5)
  a = pruning.random(jax.random.key(0), m0, 0.4)
  b = pruning.random(jax.random.key(1), m0, 0.4)
  r0, _ = masks.count(m0)
  assert masks.count(a)[0] == r0 - round(0.4 * r0)
  assert masks.hamming(a, b) > 0
  for old, new in zip(jax.tree.leaves(m0), jax.tree.leaves(a)):
    assert bool(jnp.all(new <= old))
  layer = pruning.random(jax.random.key(0), masks.init(params), 0.5, scope="layerwise")
  assert [int(k.sum()) for k in kernels(layer)] == [300, 150, 15]


def test_sparsity_model_sparsity_and_hamming_by_hand():
  m = {"a": {"kernel": jnp.array([[1.0, 0.0], [0.0, 1.0]]), "bias": jnp.ones(2)}}
  assert masks.sparsity(m) == 0.5
  assert masks.model_sparsity(m) == pytest.approx(2 / 6)
  other = {"a": {"kernel": jnp.array([[1.0, 1.0], [0.0, 0.0]]), "bias": jnp.ones(2)}}
  assert masks.hamming(m, other) == 0.5
  assert masks.apply({"a": {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.ones(2)}}, m)["a"]["kernel"].tolist() \
      == [[3.0, 0.0], [0.0, 3.0]]


def test_rate_per_round_reaches_target():
  rate = pruning.rate_per_round(0.9, 4)
  assert (1 - rate) ** 4 == pytest.approx(0.1)


@pytest.mark.parametrize("kwargs,message", [
    (dict(fraction=1.5), "fraction=1.5 is outside [0, 1]"),
    (dict(fraction=0.5, scope="rowwise"), "scope='rowwise' is not a scope; allowed: global, layerwise"),
    (dict(fraction=0.5, layer_scale={"output/*": 0.5}), "needs scope='layerwise'")])
def test_bad_arguments_raise_value_errors_naming_the_argument(kwargs, message):
  """A library function speaks of its own arguments; config keys are the command line's to add."""
  params = make_params()
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    pruning.magnitude(params, masks.init(params), **kwargs)
  assert not isinstance(error.value, UserError) and "config." not in str(error.value)
