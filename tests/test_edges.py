"""The library's edges (issue 23, item 6): non-finite scores, nothing to prune, non-finite gradients at
pruned positions, state that belongs to one experiment, and errors that speak of their own arguments."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import models
from lth_jax.config import base
from lth_jax.errors import UserError
from lth_jax.sparsity import criteria, pruning, select
from lth_jax.sparsity import masks as masks_lib
from lth_jax.training import trainer as train
from tests.helpers import fit

NAN = float("nan")


def two_layers():
  """Two prunable leaves (a: 2x2, b: 2x2) and a bias; every weight alive."""
  params = {"a": {"kernel": jnp.array([[3.0, 1.0], [4.0, 2.0]])}, "b": {"kernel": jnp.array([[5.0, 7.0], [6.0, 8.0]])},
            "bias": jnp.zeros(2)}
  return params, masks_lib.init(params)


def scores_with(value, where=("a", "kernel", (0, 1))):
  params, _ = two_layers()
  layer, leaf, index = where
  return {**params, layer: {leaf: params[layer][leaf].at[index].set(value)}}


def fixed(scores):
  return lambda params, masks, context: scores


# -- non-finite scores: one rule on every path -------------------------------------------------------------

PATHS = {
    "scope=global": lambda c, p, m: pruning.prune(c, p, m, 0.5, "global"),
    "scope=layerwise": lambda c, p, m: pruning.prune(c, p, m, 0.5, "layerwise"),
    "distribution=global": lambda c, p, m: pruning.prune_distributed(c, p, m, 0.5, "global"),
    "distribution=uniform": lambda c, p, m: pruning.prune_distributed(c, p, m, 0.5, "uniform"),
    "iterative": lambda c, p, m: pruning.prune_iteratively(c, p, m, 0.5, 2),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value", [NAN, -NAN, np.inf, -np.inf])
@pytest.mark.parametrize("invert", [False, True])
def test_non_finite_scores_at_alive_weights_are_refused_on_every_path(path, value, invert):
  params, masks = two_layers()
  criterion = fixed(scores_with(value))
  criterion = criteria.inverted(criterion) if invert else criterion
  with pytest.raises(ValueError, match=re.escape("scores for leaf 'a/kernel' hold 1 NaN or infinite value(s)")) as e:
    PATHS[path](criterion, params, masks)
  assert not isinstance(e.value, UserError)


@pytest.mark.parametrize("path", PATHS)
def test_a_non_finite_score_of_a_pruned_weight_is_never_read(path):
  """A pruned weight's score does not matter (NaN there gives the mask that any other value gives)."""
  params, masks = two_layers()
  masks = {**masks, "a": {"kernel": jnp.array([[1.0, 0.0], [1.0, 1.0]])}}
  nan_there, zero_there = (PATHS[path](fixed(scores_with(v)), params, masks) for v in (NAN, 0.0))
  jax.tree.map(np.testing.assert_array_equal, nan_there, zero_there)


def test_traced_nan_ranks_below_every_number_of_either_sign_globally_and_per_layer():
  """Inside a compiled step nothing can be refused: NaN (and -NaN, what `inverted` makes of it) goes first."""
  params, masks = two_layers()
  which = masks_lib.prunable(params)
  for value in (NAN, -NAN):
    scores = scores_with(value)   # a: [[3, NaN], [4, 2]], b: [[5, 7], [6, 8]]
    keep_global = jax.jit(lambda s, k: select.keep_counts(s, masks, k, which))(scores, 7)
    keep_layers = jax.jit(lambda s, k: select.keep_counts(s, masks, k, which))(scores, jnp.array([3, 4]))
    for kept in (keep_global, keep_layers):   # 7 of 8 kept, 3 of a's 4: the NaN goes either way
      np.testing.assert_array_equal(kept["a"]["kernel"], [[1, 0], [1, 1]])
      np.testing.assert_array_equal(kept["b"]["kernel"], [[1, 1], [1, 1]])
    # the negated scores: a: [[-3, NaN], [-4, -2]]; keeping 2 of a's keeps -3 and -2 (NaN, then -4 go)
    negated = criteria.inverted(fixed(scores))(params, masks, None)
    kept = jax.jit(lambda s: select.keep_counts(s, masks, jnp.array([2, 4]), which))(negated)
    np.testing.assert_array_equal(kept["a"]["kernel"], [[1, 0], [0, 1]])


def test_prune_by_score_and_keep_counts_are_one_selection_with_exact_counts_and_stable_ties():
  """prune_by_score's counts (round(fraction * remaining), ties: the earlier position goes) through keep_counts."""
  scores = {"a": jnp.array([2.0, 1.0, 1.0, 1.0, 3.0, 1.0]).reshape(2, 3), "b": jnp.ones((3, 2))}
  masks = masks_lib.init(scores)
  pruned = select.prune_by_score(scores, masks, 0.5, "layerwise")
  # a: three of its four 1.0s go, the earliest three; b: all tied, its first three go
  np.testing.assert_array_equal(pruned["a"], [[1, 0, 0], [0, 1, 1]])
  np.testing.assert_array_equal(pruned["b"], [[0, 0], [0, 1], [1, 1]])
  jax.tree.map(np.testing.assert_array_equal, pruned, select.keep_counts(scores, masks, [3, 3]))


# -- nothing to prune ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda p, m, w: pruning.magnitude(p, m, 0.5, which=w),
    lambda p, m, w: pruning.magnitude(p, m, 0.5, "layerwise", which=w),
    lambda p, m, w: pruning.prune_distributed("magnitude", p, m, 0.5, "uniform", which=w),
    lambda p, m, w: pruning.prune_distributed("magnitude", p, m, 0.5, "map", which=w),
    lambda p, m, w: pruning.prune_iteratively("magnitude", p, m, 0.5, 3, which=w),
    lambda p, m, w: select.keep_counts(p, m, 1, w),
])
def test_no_prunable_leaf_is_a_value_error_saying_so(call):
  only_biases = {"a": {"bias": jnp.ones(3)}, "b": {"bias": jnp.ones(2)}}
  with pytest.raises(ValueError, match="no prunable leaf among the 2 leaves of masks: none has ndim >= 2"):
    call(only_biases, masks_lib.init(only_biases), None)
  params, masks = two_layers()
  nothing = jax.tree.map(lambda _: False, params)
  with pytest.raises(ValueError, match="no prunable leaf among the 3 leaves of masks: `which` marks none"):
    call(params, masks, nothing)


# -- the Trainer's masking: NaN and inf gradients at pruned positions ---------------------------------------

def test_nan_and_inf_gradients_at_pruned_positions_reach_neither_momentum_nor_weights():
  """sqrt(w^2) and sqrt(|w|) at a pruned w = 0 add 0 to the loss and a NaN / inf gradient at w only, so the
  alive weights must come out as without them, and the pruned ones exactly 0 (what keep_pruned does)."""
  model = models.get("mlp", num_classes=2, widths=(4,))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(64, 3)), jnp.float32)
  y = jnp.asarray((np.asarray(x[:, 0]) > 0).astype(np.int32))
  data = {"train": (x, y), "val": (x[:16], y[:16]), "test": (x[16:32], y[16:32])}
  params = model.init(jax.random.key(0), x[:1])["params"]
  masks = masks_lib.init(params)
  masks["hidden_0"]["kernel"] = masks["hidden_0"]["kernel"].at[0, :2].set(0.0)

  def poison(params):
    w = params["hidden_0"]["kernel"]
    return jnp.sqrt(w[0, 0] ** 2) + jnp.sqrt(jnp.abs(w[0, 1]))   # d/dw at 0: 0 * inf = NaN; inf
  at_pruned = jax.grad(poison)(masks_lib.apply(params, masks))["hidden_0"]["kernel"][0, :2]
  assert np.isnan(at_pruned[0]) and np.isinf(at_pruned[1])

  opt = base().optimizer
  opt.update(dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4))
  out = {}
  for regularizer in (None, poison):
    trainer = train.Trainer(model, opt, batch_size=16, steps_per_epoch=4, epochs=2, loop="steps",
                            regularizer=regularizer)
    state = trainer.init_state(params, {}, masks, jax.random.key(1))
    state, _ = fit(trainer, state, data, 1)   # a copy of the state trains (masks are shared)
    out[regularizer] = state
  poisoned, clean = out[poison], out[None]
  for leaf in jax.tree.leaves((poisoned.params, poisoned.opt_state)):
    assert np.all(np.isfinite(leaf))
  assert np.all(np.asarray(poisoned.params["hidden_0"]["kernel"])[0, :2] == 0.0)
  for a, b in zip(jax.tree.leaves(poisoned.params), jax.tree.leaves(clean.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- errors: the library speaks of its arguments, the command line names the key --------------------------

def _library_error(call, message):
  with pytest.raises(ValueError, match=re.escape(message)) as e:
    call()
  assert not isinstance(e.value, UserError) and "config." not in str(e.value), str(e.value)


def test_library_functions_raise_value_errors_naming_their_own_arguments():
  from lth_jax.metrics import calibration, corruptions, ood
  from lth_jax.sparsity import distribution, graph, group_criteria
  params, masks = two_layers()
  images = np.zeros((2, 4, 4, 3), np.float32)
  probs, labels = np.full((2, 2), 0.5), np.array([0, 1])
  for call, message in [
      (lambda: pruning.prune("l2", params, masks, 0.5), "criterion 'l2' is not registered; allowed: magnitude"),
      (lambda: criteria.get("l2"), "criterion 'l2' is not registered"),
      (lambda: pruning.magnitude(params, masks, 0.5, "rowwise"), "scope='rowwise' is not a scope"),
      (lambda: pruning.prune_distributed("magnitude", params, masks, 0.5, "erdos"), "kind='erdos' is not a distribution"),
      (lambda: distribution.parse_map(("output/*",)), "entry 'output/*' must read 'PATTERN=SPARSITY'"),
      (lambda: group_criteria.select([np.ones(2)], 1.5), "ratio=1.5 is outside [0, 1]"),
      (lambda: group_criteria.group_scores({}, [], "gamma"), "criterion='gamma' is not a group criterion"),
      (lambda: graph.channel_groups(lambda p, x: x, {}, images, updates=True),
       "with updates=True, fn must return (output, updates)"),
      (lambda: graph.narrow_function(lambda p, x: x, {}, [graph.Group(2, ())], [3]),
       "sizes=(3,) must give each of the 1 groups from 1 to its channels"),
      (lambda: corruptions.corrupt("fog", images, 1), "name='fog' is not a corruption"),
      (lambda: corruptions.corrupt("contrast", images, 7), "severity=7 must be one of (1, 2, 3, 4, 5)"),
      (lambda: calibration.ece(probs, labels, 0), "num_bins must be an integer >= 1, got 0"),
      (lambda: ood.auroc(np.ones(2), np.array([np.nan, 1.0])), "OOD scores must not contain nan"),
  ]:
    _library_error(call, message)


@pytest.mark.parametrize("overrides, message", [
    ({"prune.scope": "global", "prune.layer_scale": ("output/*=0.5",)},
     "it needs config.prune.scope='layerwise', not 'global'"),
    ({"prune.distribution": "map", "prune.layer_sparsity": ("output/*",)},
     "config.prune.layer_sparsity entry 'output/*' must read 'PATTERN=SPARSITY'"),
    ({"prune.scope": "layerwise", "prune.layer_scale": ("output/*",)},
     "config.prune.layer_scale entry 'output/*' must read 'PATTERN=FACTOR'"),
    ({"metrics.num_bins": 0}, "config.metrics.num_bins=0 must be an integer >= 1"),
])
def test_the_command_line_names_the_key_before_anything_trains(overrides, message):
  from lth_jax import experiment
  from tests.helpers import small_config
  with pytest.raises(UserError, match=re.escape(message)):
    experiment.build(small_config(**overrides))


# -- state that belongs to one experiment, not to the process ----------------------------------------------

def test_each_trainer_traces_its_convolutions_in_its_own_cpu_conv_mode():
  """Two experiments' trainers in one process: each compiles with its own train.cpu_conv, whatever was
  built last, and building an experiment leaves the process default alone."""
  from lth_jax import experiment
  from lth_jax.models import cpu_conv
  from lth_jax.training import step
  from tests.helpers import small_config
  model = models.get("conv2", num_classes=10)
  x = jnp.zeros((1, 8, 8, 3))
  variables = model.init(jax.random.key(0), x)
  opt = base().optimizer
  trainers = {mode: train.Trainer(model, opt, batch_size=1, steps_per_epoch=1, epochs=1, cpu_conv=mode)
              for mode in ("on", "off")}
  default = cpu_conv.enabled()
  experiment.build(small_config(**{"train.cpu_conv": "off" if default else "on"}))
  assert cpu_conv.enabled() == default
  for mode, trainer in trainers.items():
    program = str(jax.make_jaxpr(lambda v: step.apply_model(trainer.recipe, v, x, train=False))(variables))
    # the canonical path is a custom_vjp around each convolution (cpu_conv._conv)
    assert ("custom_vjp_call" in program) == (mode == "on"), mode


def test_an_experiment_and_its_trainers_are_freed_with_it_and_replicates_share_them():
  import gc
  import weakref
  from lth_jax import experiment
  from tests.helpers import small_config
  exp = experiment.build(small_config())
  trainer = exp.trainer(2)
  other = exp.replicate(1)
  assert other.trainer(2) is trainer and exp.trainer(2) is trainer and exp.trainer(3) is not trainer
  gone = weakref.ref(exp)
  del exp, other, trainer
  gc.collect()
  assert gone() is None


def test_orbax_calls_leave_the_process_hooks_as_they_were_unless_one_failed(tmp_path, monkeypatch):
  import logging as std_logging
  import sys
  from absl import logging
  from lth_jax.training import checkpoint
  from lth_jax.training.state import TrainState
  reached = []
  monkeypatch.setattr(sys, "unraisablehook", reached.append)
  own = sys.unraisablehook
  params = {"w": jnp.ones((2, 2))}
  state = TrainState(step=jnp.asarray(0), params=params, batch_stats={}, masks=params, opt_state=(),
                     rng=jax.random.key(0))
  checkpoint.save_ticket(str(tmp_path / "ticket"), state, params)
  checkpoint.load_ticket(str(tmp_path / "ticket"))
  assert sys.unraisablehook is own
  assert checkpoint._not_from_orbax not in logging.get_absl_logger().filters
  assert checkpoint._not_an_orbax_future not in std_logging.getLogger("asyncio").filters
  # a store's managers run threads of their own: contained while it is open, restored when it closes
  store = checkpoint.SegmentStore(str(tmp_path / "checkpoints"), every=1, keep=1)
  store.save("dense", 1, state, [], final=True)
  assert getattr(sys.unraisablehook, "lth_jax", False)
  assert store.restore("dense", state, 1) is not None
  store.close()
  assert sys.unraisablehook is own
  assert checkpoint._not_from_orbax not in logging.get_absl_logger().filters
  assert checkpoint._not_an_orbax_future not in std_logging.getLogger("asyncio").filters
  # a failed call leaves the containment, which drops only the loop-closed echo and passes the rest on
  with pytest.raises(OSError):
    with checkpoint._quiet():
      raise OSError("disk full")
  try:
    echo = type("U", (), {"object": None, "exc_value": RuntimeError("Event loop is closed")})()
    other = type("U", (), {"object": None, "exc_value": RuntimeError("something else")})()
    sys.unraisablehook(echo)
    sys.unraisablehook(other)
    assert reached == [other]
    # asyncio's report of a failed future: dropped when the failure came out of Orbax's code only
    def report(filename):
      try:
        exec(compile("raise OSError(28, 'No space left on device')", filename, "exec"))
      except OSError as e:
        return std_logging.LogRecord("asyncio", std_logging.ERROR, "base_events.py", 1,
                                     "Future exception was never retrieved", None, (OSError, e, e.__traceback__))
    asyncio_logger = std_logging.getLogger("asyncio")
    assert not asyncio_logger.filter(report("/venv/site-packages/orbax/checkpoint/async_path.py"))
    assert asyncio_logger.filter(report("/home/me/my_own_code.py"))
  finally:
    logging.get_absl_logger().removeFilter(checkpoint._not_from_orbax)
    std_logging.getLogger("asyncio").removeFilter(checkpoint._not_an_orbax_future)
