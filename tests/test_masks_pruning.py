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
  a = pruning.random(params, m0, 0.4, key=jax.random.key(0))
  b = pruning.random(params, m0, 0.4, key=jax.random.key(1))
  r0, _ = masks.count(m0)
  assert masks.count(a)[0] == r0 - round(0.4 * r0)
  assert masks.hamming(a, b) > 0
  for old, new in zip(jax.tree.leaves(m0), jax.tree.leaves(a)):
    assert bool(jnp.all(new <= old))
  layer = pruning.random(params, masks.init(params), 0.5, scope="layerwise", key=jax.random.key(0))
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


# --- pruning to a target sparsity -------------------------------------------------------------------
# Two kernels whose magnitudes are known by hand: a = 1, 2, ..., 20 and b = 1.5, 2.5, ..., 12.5 (so no
# two weights tie), and a bias that is never pruned. `a` starts with its ten smallest (1..10) pruned.

def target_params():
  return {"a": {"kernel": jnp.arange(1.0, 21.0).reshape(4, 5)},
          "b": {"kernel": (jnp.arange(12.0) + 1.5).reshape(3, 4), "bias": jnp.full(4, 0.1)}}


def half_pruned_a():
  m = masks.init(target_params())
  return {**m, "a": {"kernel": (jnp.arange(1.0, 21.0) > 10).astype(jnp.float32).reshape(4, 5)}}


def alive(m):
  """The magnitudes still alive in each kernel, by hand-readable value."""
  params = target_params()
  return [sorted(float(w) for w, k in zip(params[n]["kernel"].ravel(), m[n]["kernel"].ravel()) if k) for n in "ab"]


def test_magnitude_to_global_reaches_the_target_over_all_prunable_weights():
  # 32 prunable weights, 10 already pruned; sparsity 0.5 keeps 32 - round(16) = 16 of the 22 alive:
  # the 16 largest alive are 11..20 in a and 7.5..12.5 in b
  m = pruning.magnitude_to(target_params(), half_pruned_a(), 0.5)
  assert alive(m) == [list(np.arange(11.0, 21.0)), list(np.arange(7.5, 13.0))]
  assert masks.sparsity(m) == 0.5 and bool(jnp.all(m["b"]["bias"] == 1))
  # the same through `magnitude`, with the rate a user had to work out by hand: 6 of the 22 alive
  assert alive(pruning.magnitude(target_params(), half_pruned_a(), 6 / 22)) == alive(m)
  # from fresh masks, 0.75 keeps 8: all of them in a (13..20 beat b's largest, 12.5)
  m = pruning.magnitude_to(target_params(), masks.init(target_params()), 0.75)
  assert alive(m) == [list(np.arange(13.0, 21.0)), []]


def test_magnitude_to_layerwise_reaches_the_target_in_each_kernel():
  # 0.75 of each kernel: a keeps 20 - 15 = 5 (16..20), b keeps 12 - 9 = 3 (10.5..12.5)
  m = pruning.magnitude_to(target_params(), half_pruned_a(), 0.75, scope="layerwise")
  assert alive(m) == [[16.0, 17.0, 18.0, 19.0, 20.0], [10.5, 11.5, 12.5]]
  # 0.25: a already holds only 10 < 15 and stays as it is (masks are cumulative); b keeps 12 - 3 = 9
  # (4.5..12.5)
  m = pruning.magnitude_to(target_params(), half_pruned_a(), 0.25, scope="layerwise")
  assert alive(m) == [list(np.arange(11.0, 21.0)), list(np.arange(4.5, 13.0))]
  assert masks.layer_counts(m) == {"a/kernel": {"remaining": 10, "total": 20}, "b/kernel": {"remaining": 9, "total": 12}}


def test_random_to_and_prune_to_count_exactly_and_stay_cumulative():
  params, start = target_params(), half_pruned_a()
  m = pruning.random_to(params, start, 0.5, key=jax.random.key(0))
  assert masks.count(m) == (16, 32)   # 32 - round(0.5 * 32)
  for before, after in zip(jax.tree.leaves(start), jax.tree.leaves(m)):
    assert bool(jnp.all(after <= before))
  layer = pruning.random_to(params, start, 0.75, "layerwise", key=jax.random.key(1))
  assert [row["remaining"] for row in masks.layer_report(layer)] == [5, 3]
  # sparsity 0 prunes nothing, 1 everything prunable; any criterion by name
  assert masks.count(pruning.prune_to("magnitude", params, start, 0.0)) == (22, 32)
  assert masks.count(pruning.prune_to("magnitude", params, start, 1.0)) == (0, 32)


@pytest.mark.parametrize("kwargs,message", [
    (dict(sparsity=1.5), "sparsity=1.5 is outside [0, 1]"),
    (dict(sparsity=0.5, scope="rowwise"), "scope='rowwise' is not a scope; allowed: global, layerwise")])
def test_bad_targets_raise_value_errors_naming_the_argument(kwargs, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    pruning.magnitude_to(target_params(), masks.init(target_params()), **kwargs)


def test_random_takes_the_arguments_of_magnitude_and_its_key_by_name():
  """One order for every pruning function; the old random(key, masks, fraction) fails loudly."""
  params = make_params()
  m = pruning.random(params, masks.init(params), 0.5, "layerwise", key=jax.random.key(0))
  assert [int(k.sum()) for k in kernels(m)] == [300, 150, 15]
  with pytest.raises(TypeError, match="key"):
    pruning.random(jax.random.key(0), masks.init(params), 0.5)
