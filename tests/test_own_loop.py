import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from lth_jax.sparsity import masks, pruning
from lth_jax.sparsity.optax import MaskedState, keep_pruned, masks_of, with_masks
from tests.helpers import check_imp_example_rounds, load_example, pruned_and_kept

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "own_loop.py")

OPTIMIZERS = {
    "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "decay_chain": lambda: optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9)),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2),
}


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "hidden": {"kernel": jnp.asarray(rng.normal(size=(12, 16)), jnp.float32), "bias": jnp.zeros(16)},
      "output": {"kernel": jnp.asarray(rng.normal(size=(16, 4)), jnp.float32), "bias": jnp.zeros(4)},
  }


def pruned_masks(params, fraction=0.5):
  return pruning.magnitude(params, masks.init(params), fraction, which=masks.prunable(params))


def random_grads(params, key):
  keys = jax.random.split(key, len(jax.tree.leaves(params)))
  leaves = [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, jax.tree.leaves(params))]
  return jax.tree.unflatten(jax.tree.structure(params), leaves)


def run(tx, params, steps, seed=0):
  state = tx.init(params)
  for key in jax.random.split(jax.random.key(seed), steps):
    updates, state = tx.update(random_grads(params, key), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_and_kept_ones_move(name):
  params = make_params()
  m = pruned_masks(params)
  start = masks.apply(params, m)
  final, state = run(keep_pruned(OPTIMIZERS[name](), m), start, steps=5)
  pruned, kept = pruned_and_kept(final, m)
  _, kept_before = pruned_and_kept(start, m)
  assert pruned.size > 0 and np.array_equal(pruned, np.zeros_like(pruned))
  assert np.all(kept != kept_before)
  # The inner optimizer's moments never saw a pruned position.
  for leaf in jax.tree.leaves(state.inner_state):
    if np.shape(leaf) == (12, 16):
      assert np.all(np.asarray(leaf)[np.asarray(m["hidden"]["kernel"]) == 0] == 0)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_nonzero_params_at_pruned_positions_become_exactly_zero_after_one_step(name):
  params = make_params()  # not masked: pruned positions hold their old values
  m = pruned_masks(params)
  assert np.all(pruned_and_kept(params, m)[0] != 0)
  final, _ = run(keep_pruned(OPTIMIZERS[name](), m), params, steps=1)
  pruned, _ = pruned_and_kept(final, m)
  assert np.array_equal(pruned, np.zeros_like(pruned))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_all_ones_masks_give_exactly_the_bare_optimizer(name):
  params = make_params()
  wrapped, _ = run(keep_pruned(OPTIMIZERS[name](), masks.init(params)), params, steps=4)
  bare, _ = run(OPTIMIZERS[name](), params, steps=4)
  for a, b in zip(jax.tree.leaves(wrapped), jax.tree.leaves(bare)):
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_update_without_params_is_a_clear_error():
  params = make_params()
  tx = keep_pruned(optax.sgd(0.1), masks.init(params))
  with pytest.raises(ValueError, match="needs the params"):
    tx.update(params, tx.init(params))


def test_masks_of_another_structure_are_refused():
  params = make_params()
  with pytest.raises(ValueError, match="structure"):
    keep_pruned(optax.sgd(0.1), masks.init(params["hidden"])).init(params)
  with pytest.raises(ValueError, match="shape"):
    keep_pruned(optax.sgd(0.1), masks.init(make_params())).init(
        jax.tree.map(lambda p: jnp.zeros(p.shape + (1,)), params))


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))


def test_train_state_apply_gradients_under_jit():
  model = MLP()
  x = jax.random.normal(jax.random.key(1), (32, 8))
  y = jax.random.randint(jax.random.key(2), (32,), 0, 3)
  params = jax.jit(model.init)(jax.random.key(0), x)["params"]
  m = pruned_masks(params, 0.6)
  tx = keep_pruned(optax.adamw(1e-2, weight_decay=1e-1), m)
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)  # unmasked params

  @jax.jit
  def step(state):
    def loss(p):
      logits = state.apply_fn({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return state.apply_gradients(grads=jax.grad(loss)(state.params))

  start = masks.apply(params, m)
  for _ in range(5):
    state = step(state)
  pruned, kept = pruned_and_kept(state.params, m)
  assert np.array_equal(pruned, np.zeros_like(pruned))
  assert np.any(kept != pruned_and_kept(start, m)[1])
  assert int(state.step) == 5 and isinstance(state.opt_state, MaskedState)


def test_with_masks_resets_the_momentum_and_masks_of_returns_the_masks():
  params = make_params()
  inner = optax.sgd(0.1, momentum=0.9)
  first, second = pruned_masks(params, 0.3), pruned_masks(params, 0.6)
  tx = keep_pruned(inner, first)
  _, state = run(tx, masks.apply(params, first), steps=3)
  assert masks_of(state) is first
  assert any(np.any(np.asarray(t) != 0) for t in jax.tree.leaves(state.inner_state))

  fresh = inner.init(params)
  for given in (tx, inner):  # the wrapper (a TrainState's state.tx) or the inner transformation
    new = with_masks(state, second, params=params, tx=given)
    assert masks_of(new) is second
    assert jax.tree.structure(new.inner_state) == jax.tree.structure(fresh)
    for a, b in zip(jax.tree.leaves(new.inner_state), jax.tree.leaves(fresh)):
      assert np.array_equal(np.asarray(a), np.asarray(b))

  kept = with_masks(state, second, reset=False)
  assert masks_of(kept) is second and kept.inner_state is state.inner_state
  with pytest.raises(ValueError, match="params"):
    with_masks(state, second)
  with pytest.raises(ValueError, match="outermost"):
    masks_of(state.inner_state)


def test_swapped_masks_are_the_ones_update_uses():
  params = make_params()
  tx = keep_pruned(optax.sgd(0.1, momentum=0.9), masks.init(params))
  m = pruned_masks(params, 0.7)
  state = with_masks(tx.init(params), m, params=params, tx=tx)
  updates, _ = tx.update(random_grads(params, jax.random.key(3)), state, params)
  pruned, _ = pruned_and_kept(optax.apply_updates(params, updates), m)
  assert np.array_equal(pruned, np.zeros_like(pruned))


def test_example_prunes_to_80_percent_and_learns():
  results = load_example(EXAMPLE).main(epochs=3, rounds=3, seed=0)
  check_imp_example_rounds(results)
  # 3 epochs reach 0.92 on the 450 held-out digits at 80% sparsity (chance is 0.1).
  assert results[-1]["test_accuracy"] > 0.75
