"""Flax NNX (issue 28, item 4): masks, pruning, criteria and keep_pruned on an NNX model's state, with
nnx.Optimizer, and examples/own_loop_nnx.py (the IMP-with-rewinding example of tests/test_own_loop.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lth_jax.sparsity import criteria, masks, pruning
from lth_jax.sparsity.optax import MaskedState, keep_pruned, masks_of, with_masks
from tests.helpers import check_imp_example_rounds, load_example, pruned_and_kept

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "own_loop_nnx.py")
NAMES = ["hidden/bias", "hidden/kernel", "output/bias", "output/kernel"]


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(12, 16, rngs=rngs)
    self.output = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    return self.output(nnx.relu(self.hidden(x)))


def kernels(tree) -> list[np.ndarray]:
  """The two kernels of MLP's state (or masks), hidden then output, as numpy arrays."""
  return [np.asarray(tree["hidden"]["kernel"][...]), np.asarray(tree["output"]["kernel"][...])]


def test_masks_and_pruning_take_an_nnx_state():
  state = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
  # leaves are named by their path, the Variable's `value` left out: as a linen params dict names them
  assert [name for name, _ in masks.named_leaves(state)] == NAMES
  assert [bool(w) for w in jax.tree.leaves(masks.prunable(state))] == [False, True, False, True]
  assert [bool(w) for w in jax.tree.leaves(masks.prunable(state, ("output/*",)))] == [False, True, False, False]
  which = masks.prunable(state)
  m = pruning.magnitude(state, masks.init(state), 0.5, scope="global", which=which)
  # by hand: the 128 largest |w| of the 12*16 + 16*4 = 256 kernel weights survive (no ties among floats)
  flat = np.concatenate([np.abs(k).ravel() for k in kernels(state)])
  threshold = np.sort(flat)[::-1][127]
  for mask, kernel in zip(kernels(m), kernels(state)):
    assert np.array_equal(mask, (np.abs(kernel) >= threshold).astype(mask.dtype))
  assert masks.count(m, which) == (128, 256)
  assert np.all(np.asarray(m["hidden"]["bias"][...]) == 1) and np.all(np.asarray(m["output"]["bias"][...]) == 1)
  # the plain-array form of the state (nnx.as_pure) gives the same masks
  pure = pruning.magnitude(nnx.as_pure(state), masks.init(nnx.as_pure(state)), 0.5, which=nnx.as_pure(which))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(pure), jax.tree.leaves(m)))
  layerwise = pruning.magnitude(state, masks.init(state), 0.5, scope="layerwise", which=which)
  assert [row["remaining"] for row in masks.layer_report(layerwise, which)] == [96, 32]
  assert masks.count(pruning.random(state, m, 0.25, which=which, key=jax.random.key(1)), which) == (96, 256)


def test_a_data_driven_criterion_scores_an_nnx_state():
  """SNIP's |g * w| with the loss of the model merged from the state, against nnx.grad of the model itself."""
  model = MLP(nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  x = jax.random.normal(jax.random.key(1), (8, 12))
  y = jax.random.randint(jax.random.key(2), (8,), 0, 4)

  def loss(params, batch):
    logits = nnx.merge(graphdef, params)(batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  context = criteria.Context(batch=(x, y), loss_fn=loss)
  scores = criteria.get("snip")(state, masks.init(state), context)
  grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(model)
  for s, g, w in zip(kernels(scores), kernels(grads), kernels(state)):
    np.testing.assert_allclose(s, np.abs(g * w), rtol=1e-6)
  m = pruning.prune("snip", state, masks.init(state), 0.75, context=context)
  assert masks.count(m) == (64, 256)


@pytest.mark.parametrize("inner", [lambda: optax.sgd(0.1, momentum=0.9), lambda: optax.adamw(1e-2, weight_decay=1e-2)],
                         ids=["sgd_momentum", "adamw"])
def test_keep_pruned_drives_nnx_optimizer(inner):
  model = MLP(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (32, 12))
  y = jax.random.randint(jax.random.key(2), (32,), 0, 4)
  params = nnx.state(model, nnx.Param)
  m = pruning.magnitude(params, masks.init(params), 0.5)
  start = nnx.state(nnx.clone(model), nnx.Param)   # not masked: pruned positions hold their old values
  assert np.all(pruned_and_kept(start, m)[0] != 0)
  optimizer = nnx.Optimizer(model, keep_pruned(inner(), m), wrt=nnx.Param)
  assert isinstance(optimizer.opt_state, MaskedState)

  @nnx.jit
  def step(model, optimizer):
    loss = lambda model: optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()  # noqa: E731
    optimizer.update(model, nnx.grad(loss)(model))

  for _ in range(4):
    step(model, optimizer)
  pruned, kept = pruned_and_kept(nnx.state(model, nnx.Param), m)
  assert pruned.size == 128 and np.array_equal(pruned, np.zeros_like(pruned))
  assert np.all(kept != pruned_and_kept(start, m)[1])
  # the inner optimizer's moments never saw a pruned position
  for leaf in jax.tree.leaves(nnx.as_pure(optimizer.opt_state.inner_state)):
    if np.shape(leaf) == (12, 16):
      assert np.all(np.asarray(leaf)[kernels(m)[0] == 0] == 0)

  # new masks in place (as examples/own_loop_nnx.py rewinds): fresh moments, and the new masks rule
  more = pruning.magnitude(nnx.state(model, nnx.Param), m, 0.5)
  fresh = with_masks(optimizer.opt_state, more, params=start, tx=optimizer.tx)
  nnx.update(optimizer.opt_state, nnx.state(fresh))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.as_pure(masks_of(optimizer.opt_state))),
                                                  jax.tree.leaves(more)))
  for a, b in zip(jax.tree.leaves(nnx.as_pure(optimizer.opt_state.inner_state)),
                  jax.tree.leaves(inner().init(nnx.as_pure(params)))):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  step(model, optimizer)
  pruned, _ = pruned_and_kept(nnx.state(model, nnx.Param), more)
  assert pruned.size == 192 and np.array_equal(pruned, np.zeros_like(pruned))


def test_keep_pruned_on_variable_states_returns_updates_in_their_form():
  """optax used functionally on nnx.split's state (Variables): the updates apply to that state."""
  _, params = nnx.split(MLP(nnx.Rngs(0)), nnx.Param)
  m = pruning.magnitude(params, masks.init(params), 0.5)
  tx = keep_pruned(optax.sgd(0.1, momentum=0.9), m)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  pruned, kept = pruned_and_kept(optax.apply_updates(params, updates), m)
  assert np.array_equal(pruned, np.zeros_like(pruned))
  np.testing.assert_allclose(kept, pruned_and_kept(params, m)[1] - 0.1, rtol=1e-6)


def test_example_prunes_to_80_percent_and_learns():
  results = load_example(EXAMPLE).main(epochs=2, rounds=3, seed=0)
  check_imp_example_rounds(results)
  # chance is 0.1 on the 450 held-out digits
  assert results[-1]["test_accuracy"] > 0.75
