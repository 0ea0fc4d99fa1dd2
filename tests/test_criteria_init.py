"""Pruning at initialization: SNIP, GraSP and SynFlow against their definitions on tiny networks.

Gradients and Hessian-gradient products are checked against central finite differences in float64;
SynFlow against its conservation law (Tanaka et al. 2020, Theorem 1) and its exact final count.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax.sparsity import criteria, pruning
from lth_jax.sparsity import masks as masks_lib
from lth_jax.training.step import cross_entropy


def tiny_params(dtype, seed=0, sizes=(4, 5, 3)):
  """A bias-free MLP's weights: {"layer_i": {"kernel": (in, out)}}."""
  rng = np.random.default_rng(seed)
  return {f"layer_{i}": {"kernel": jnp.asarray(rng.normal(size=(a, b)), dtype)}
          for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def logits_fn(params, x):
  """tanh hidden layers (smooth: the Hessian exists everywhere), linear output."""
  names = sorted(params)
  for name in names[:-1]:
    x = jnp.tanh(x @ params[name]["kernel"])
  return x @ params[names[-1]]["kernel"]


def relu_logits_fn(params, x):
  names = sorted(params)
  for name in names[:-1]:
    x = jax.nn.relu(x @ params[name]["kernel"])
  return x @ params[names[-1]]["kernel"]


def loss_fn(params, batch):
  x, y = batch
  return jnp.mean(cross_entropy(logits_fn(params, x), y))


def batch(dtype, n=6, features=4, classes=3):
  rng = np.random.default_rng(1)
  return jnp.asarray(rng.normal(size=(n, features)), dtype), jnp.asarray(rng.integers(0, classes, n))


def finite_difference(f, params, direction_fn, eps=1e-5):
  """d/dw_i f(params) for every weight i, by central differences: a pytree like params."""
  leaves, treedef = jax.tree.flatten(params)
  out = []
  for li, leaf in enumerate(leaves):
    flat = np.zeros(leaf.size)
    for j in range(leaf.size):
      bump = np.zeros(leaf.size)
      bump[j] = eps
      def shifted(sign):
        moved = list(leaves)
        moved[li] = leaf + sign * bump.reshape(leaf.shape)
        return direction_fn(f(jax.tree.unflatten(treedef, moved)))
      flat[j] = (shifted(1) - shifted(-1)) / (2 * eps)
    out.append(flat.reshape(leaf.shape))
  return jax.tree.unflatten(treedef, out)


def test_snip_is_abs_gradient_times_weight_by_finite_differences():
  with jax.enable_x64(True):
    params, data = tiny_params(jnp.float64), batch(jnp.float64)
    masks = masks_lib.init(params)
    masks["layer_0"]["kernel"] = masks["layer_0"]["kernel"].at[0, 0].set(0)
    scores = criteria.get("snip")(params, masks, criteria.Context(batch=data, loss_fn=loss_fn))
    masked = masks_lib.apply(params, masks)
    grads = finite_difference(lambda p: loss_fn(p, data), masked, float)
    for s, g, w in zip(jax.tree.leaves(scores), jax.tree.leaves(grads), jax.tree.leaves(masked)):
      np.testing.assert_allclose(np.asarray(s), np.abs(g * np.asarray(w)), rtol=1e-6, atol=1e-9)
    assert float(scores["layer_0"]["kernel"][0, 0]) == 0.0   # a pruned weight scores nothing


def test_grasp_hessian_gradient_is_a_finite_difference_of_gradients():
  with jax.enable_x64(True):
    params, data = tiny_params(jnp.float64), batch(jnp.float64)
    g = jax.grad(loss_fn)(params, data)
    hg = criteria.hessian_gradient(loss_fn, params, data)
    # H g = d/dt grad(w + t g) at t = 0
    eps = 1e-5
    def grad_at(t):
      return jax.grad(loss_fn)(jax.tree.map(lambda w, d: w + t * d, params, g), data)
    expected = jax.tree.map(lambda a, b: (a - b) / (2 * eps), grad_at(eps), grad_at(-eps))
    for a, b in zip(jax.tree.leaves(hg), jax.tree.leaves(expected)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-9)
    # at temperature 1 GraSP's loss is loss_fn itself
    context = criteria.Context(batch=data, logits_fn=logits_fn, grasp_temperature=1.0)
    scores = criteria.get("grasp")(params, masks_lib.init(params), context)
    for s, w, h in zip(jax.tree.leaves(scores), jax.tree.leaves(params), jax.tree.leaves(hg)):
      np.testing.assert_allclose(np.asarray(s), np.asarray(w * h), rtol=1e-12)
    # higher is kept: pruning removes the paper's highest -w*(Hg) first
    m = pruning.prune("grasp", params, masks_lib.init(params), 0.25, which=masks_lib.prunable(params),
                      context=context)
    paper = np.concatenate([-np.asarray(s).ravel() for s in jax.tree.leaves(scores)])
    kept = np.concatenate([np.asarray(k).ravel() for k in jax.tree.leaves(m)])
    assert paper[kept == 0].min() >= paper[kept == 1].max()


def biased_params(seed=0, sizes=(4, 5, 3)):
  """A tanh MLP's weights and biases (float64): {"layer_i": {"kernel": (in, out), "bias": (out,)}}."""
  rng = np.random.default_rng(seed)
  return {f"layer_{i}": {"kernel": jnp.asarray(rng.normal(size=(a, b))), "bias": jnp.asarray(rng.normal(size=b))}
          for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def biased_logits_fn(params, x):
  x = jnp.tanh(x @ params["layer_0"]["kernel"] + params["layer_0"]["bias"])
  return x @ params["layer_1"]["kernel"] + params["layer_1"]["bias"]


def test_grasp_scores_the_weights_only_at_the_authors_temperature():
  """GraSP as its code (and Synaptic-Flow's) computes it: the loss of logits / 200, g = dL/dW over the
  kernels W only, z = g_stopped . dL/dW, H g = dz/dW (biases closed over, never differentiated), score
  -W * Hg removed from the highest."""
  with jax.enable_x64(True):
    params, (x, y) = biased_params(), batch(jnp.float64)
    biases = (params["layer_0"]["bias"], params["layer_1"]["bias"])

    def loss_of_kernels(kernels, temperature=200.0):
      p = {f"layer_{i}": {"kernel": k, "bias": b} for i, (k, b) in enumerate(zip(kernels, biases))}
      return jnp.mean(cross_entropy(biased_logits_fn(p, x) / temperature, y))
    kernels = (params["layer_0"]["kernel"], params["layer_1"]["kernel"])
    g = jax.lax.stop_gradient(jax.grad(loss_of_kernels)(kernels))
    hg = jax.grad(lambda k: sum(jnp.vdot(a, b) for a, b in zip(g, jax.grad(loss_of_kernels)(k))))(kernels)
    paper = [-w * h for w, h in zip(kernels, hg)]

    context = criteria.Context(batch=(x, y), logits_fn=biased_logits_fn)   # T defaults to the authors' 200
    scores = criteria.get("grasp")(params, masks_lib.init(params), context)
    for i in range(2):
      np.testing.assert_allclose(np.asarray(scores[f"layer_{i}"]["kernel"]), -np.asarray(paper[i]), rtol=1e-9)
      assert not np.any(np.asarray(scores[f"layer_{i}"]["bias"]))   # biases are not scored

    # what the test tells apart: H g over the whole tree (biases too), and T = 1, give other scores
    def loss_of_tree(p, b):
      return jnp.mean(cross_entropy(biased_logits_fn(p, x) / 200.0, y))
    whole = criteria.hessian_gradient(loss_of_tree, params, None, jax.tree.map(lambda _: True, params))
    assert not np.allclose(np.asarray(whole["layer_0"]["kernel"]), np.asarray(hg[0]), rtol=1e-3)
    cold_context = criteria.Context(batch=(x, y), logits_fn=biased_logits_fn, grasp_temperature=1.0)
    cold = criteria.get("grasp")(params, masks_lib.init(params), cold_context)
    assert not np.allclose(np.asarray(cold["layer_0"]["kernel"]), np.asarray(scores["layer_0"]["kernel"]) * 200 ** 2,
                           rtol=1e-3)

    # pruning 40% removes the paper's highest -W * Hg, counted over the kernels
    which = masks_lib.prunable(params)
    m = pruning.prune("grasp", params, masks_lib.init(params), 0.4, which=which, context=context)
    flat_paper = np.concatenate([np.asarray(s).ravel() for s in paper])
    kept = np.concatenate([np.asarray(m[f"layer_{i}"]["kernel"]).ravel() for i in range(2)])
    assert kept.sum() == flat_paper.size - round(0.4 * flat_paper.size)
    assert flat_paper[kept == 0].min() >= flat_paper[kept == 1].max()


def test_synflow_conserves_flow_between_consecutive_layers():
  with jax.enable_x64(True):
    params = tiny_params(jnp.float64, sizes=(6, 5, 4, 3))
    context = criteria.Context(batch=batch(jnp.float64, features=6), logits_fn=relu_logits_fn)
    scores = criteria.get("synflow")(params, masks_lib.init(params), context)
    sums = [float(jnp.sum(scores[f"layer_{i}"]["kernel"])) for i in range(3)]
    assert sums[0] > 0
    np.testing.assert_allclose(sums, [sums[0]] * 3, rtol=1e-10)
    # and each equals R itself: the summed output of the all-ones input through |w|
    r = float(jnp.sum(relu_logits_fn(jax.tree.map(jnp.abs, params), jnp.ones((1, 6)))))
    assert sums[0] == pytest.approx(r, rel=1e-10)


def test_synflow_per_neuron_conservation_incoming_equals_outgoing():
  with jax.enable_x64(True):
    params = tiny_params(jnp.float64, sizes=(6, 5, 3))
    context = criteria.Context(batch=batch(jnp.float64, features=6), logits_fn=relu_logits_fn)
    scores = criteria.get("synflow")(params, masks_lib.init(params), context)
    incoming = np.asarray(scores["layer_0"]["kernel"]).sum(0)   # into each hidden neuron
    outgoing = np.asarray(scores["layer_1"]["kernel"]).sum(1)   # out of it
    np.testing.assert_allclose(incoming, outgoing, rtol=1e-10)


@pytest.mark.parametrize("fraction,iterations", [(0.9, 7), (0.995, 100), (0.5, 1)])
def test_iterative_synflow_reaches_the_exact_target_count(fraction, iterations):
  params = tiny_params(jnp.float32, sizes=(20, 30, 10))
  which = masks_lib.prunable(params)
  context = criteria.Context(batch=batch(jnp.float32, features=20), logits_fn=relu_logits_fn)
  m = pruning.prune_iteratively("synflow", params, masks_lib.init(params), fraction, iterations, which=which,
                                context=context)
  remaining, total = masks_lib.count(m, which)
  assert total == 20 * 30 + 30 * 10
  assert remaining == total - round(fraction * total)


@pytest.mark.parametrize("fraction,iterations", [(0.98, 20), (0.9, 7), (0.995, 100)])
def test_iterative_synflow_keeps_the_authors_count_each_round(fraction, iterations):
  """Synaptic-Flow's prune_loop: round e of k masks k_e = int((1 - d^(e/k)) N) of the N scores
  (Pruner._global_mask), d the density 1 - sparsity: N - k_e stay. The last round keeps lth_jax's
  one-shot count N - round(sparsity N)."""
  params = tiny_params(jnp.float32, sizes=(20, 30, 10))
  which = masks_lib.prunable(params)
  context = criteria.Context(batch=batch(jnp.float32, features=20), logits_fn=relu_logits_fn)
  alive_when_scored = []

  def synflow_recording(params, masks, context):
    alive_when_scored.append(masks_lib.count(masks, which)[0])
    return criteria.get("synflow")(params, masks, context)
  m = pruning.prune_iteratively(synflow_recording, params, masks_lib.init(params), fraction, iterations, which=which,
                                context=context)
  n, d = 900, 1 - fraction
  authors = [n - int((1 - d ** (e / iterations)) * n) for e in range(1, iterations)]
  assert alive_when_scored == [n] + authors
  assert masks_lib.count(m, which)[0] == n - round(fraction * n)
  if iterations == 100:   # where floor and round part: the old round(N d^(e/k)) kept fewer some rounds
    assert authors != [round(n * d ** (e / iterations)) for e in range(1, iterations)]


def test_iterative_synflow_differs_from_one_shot_and_rescores():
  params = tiny_params(jnp.float32, seed=3, sizes=(20, 30, 10))
  which = masks_lib.prunable(params)
  context = criteria.Context(batch=batch(jnp.float32, features=20), logits_fn=relu_logits_fn)
  once = pruning.prune("synflow", params, masks_lib.init(params), 0.98, which=which, context=context)
  many = pruning.prune_iteratively("synflow", params, masks_lib.init(params), 0.98, 20, which=which,
                                   context=context)
  assert masks_lib.count(once, which) == masks_lib.count(many, which)
  # one-shot SynFlow at high sparsity disconnects layers (layer collapse); the iterated one keeps flow
  flow = lambda m: float(jnp.sum(relu_logits_fn(jax.tree.map(jnp.abs, masks_lib.apply(params, m)),
                                                jnp.ones((1, 20)))))
  assert flow(many) > 0
  assert masks_lib.hamming(once, many, which) > 0


def test_data_criteria_refuse_a_missing_batch():
  params = tiny_params(jnp.float32)
  with pytest.raises(ValueError, match="snip criterion needs context.batch"):
    criteria.get("snip")(params, masks_lib.init(params), criteria.Context(loss_fn=loss_fn))


def test_scoring_runs_batchnorm_in_each_criterions_authors_mode_or_the_configured_one():
  """SNIP's and GraSP's code score in train mode (the batch's statistics), Synaptic-Flow's prune_loop in
  eval mode; config.prune.score_batchnorm=train|eval overrides, and anything else is refused."""
  import types
  import flax.linen as nn
  import optax
  from lth_jax.config import base
  from lth_jax.errors import UserError
  from lth_jax.methods import common
  from lth_jax.training import step

  class TinyBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.BatchNorm(use_running_average=not train)(nn.Dense(5)(x))
      return nn.Dense(3, name="output")(jax.nn.relu(x))

  model = TinyBN()
  x, y = batch(jnp.float32, n=16)
  variables = model.init(jax.random.key(0), x)
  recipe = step.Recipe(model=model, tx=optax.sgd(0.1), lr=lambda t: 0.1, batch_size=16, steps_per_epoch=1)
  train_logits = model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
  eval_logits = model.apply(variables, x, train=False)
  assert not np.allclose(train_logits, eval_logits, atol=1e-3)

  def context(criterion, mode):
    config = base()
    config.prune.criterion, config.prune.score_batchnorm, config.prune.score_examples = criterion, mode, 16
    exp = types.SimpleNamespace(config=config, trainer=lambda epochs: types.SimpleNamespace(recipe=recipe),
                                init_batch_stats=variables["batch_stats"], data={"train": (x, y)},
                                key=lambda purpose: jax.random.key(0), which=masks_lib.prunable(variables["params"]))
    return common.criterion_context(exp, "test")

  for criterion, mode, expected in [("snip", "auto", train_logits), ("grasp", "auto", train_logits),
                                    ("synflow", "auto", eval_logits), ("snip", "eval", eval_logits),
                                    ("synflow", "train", train_logits)]:
    ctx = context(criterion, mode)
    xs, ys = ctx.batch   # the 16 examples, in a drawn order
    order = [int(np.flatnonzero(np.all(np.asarray(x) == np.asarray(row), axis=1))[0]) for row in xs]
    np.testing.assert_allclose(ctx.logits_fn(variables["params"], xs), np.asarray(expected)[order],
                               rtol=1e-5, atol=1e-6)
    assert ctx.grasp_temperature == 200.0
  assert [criteria.batchnorm_mode(c) for c in ("snip", "grasp", "synflow")] == ["train", "train", "eval"]
  config = base()
  config.prune.score_batchnorm = "batch"
  with pytest.raises(UserError, match="config.prune.score_batchnorm='batch'; allowed: auto, train, eval"):
    common.validate_prune(config)
