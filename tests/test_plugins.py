"""Criteria and methods are plug-ins: a new one is a few lines in its own module (here, this file)."""

import jax
import jax.numpy as jnp
import pytest

from lth_jax import experiment, masks, methods, pruning
from lth_jax.errors import UserError
from lth_jax.methods import common, registry
from lth_jax.sparsity import criteria
from tests.helpers import Collect, leaves_equal, run_method, small_config


@pytest.fixture
def scratch_registries(monkeypatch):
  """Register freely: the registries are restored after the test."""
  monkeypatch.setattr(criteria, "_REGISTRY", dict(criteria._REGISTRY))
  monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))


def double_magnitude(params, masks, context):
  return jax.tree.map(lambda w: 2 * jnp.abs(w), params)


def test_a_toy_criterion_gives_the_masks_of_magnitude(scratch_registries):
  criteria.register("double_magnitude")(double_magnitude)
  params = {"a": {"kernel": jax.random.normal(jax.random.key(0), (6, 7))},
            "b": {"kernel": jax.random.normal(jax.random.key(1), (7, 3)), "bias": jnp.ones(3)}}
  for scope in ("global", "layerwise"):
    m = masks.init(params)
    for fraction in (0.5, 0.3):   # cumulative, as magnitude
      toy = pruning.prune("double_magnitude", params, m, fraction, scope)
      m = pruning.magnitude(params, m, fraction, scope)
      assert leaves_equal(toy, m)
  # and a method prunes by it when the config names it: the same tickets as magnitude
  runs = {}
  for name in ("magnitude", "double_magnitude"):
    out = Collect()
    run_method(experiment.build(small_config(**{"method": "oneshot_reinit", "prune.criterion": name,
                                                "train.epochs": 2})), out)
    runs[name] = out
  assert leaves_equal(runs["magnitude"].states[-1].masks, runs["double_magnitude"].states[-1].masks)
  assert runs["magnitude"].records[-1]["test_accuracy"] == runs["double_magnitude"].records[-1]["test_accuracy"]


def test_an_unknown_criterion_is_refused_before_training():
  with pytest.raises(UserError, match="config.prune.criterion='snap'; allowed: magnitude, random"):
    experiment.build(small_config(**{"prune.criterion": "snap"}))


def test_the_random_criterion_prunes_exact_counts_with_its_own_key():
  exp = experiment.build(small_config(**{"method": "oneshot", "prune.criterion": "random", "train.epochs": 2}))
  params = exp.init_params
  a = common.prune(exp, params, masks.init(params), 0.6, "x")
  b = common.prune(exp, params, masks.init(params), 0.6, "y")
  total = masks.count(a, exp.which)[1]
  assert masks.count(a, exp.which)[0] == masks.count(b, exp.which)[0] == total - round(0.6 * total)
  assert not leaves_equal(a, b) and leaves_equal(a, common.prune(exp, params, masks.init(params), 0.6, "x"))


def test_a_toy_method_registers_validates_and_runs(scratch_registries):
  def validate(config):
    if config.method == "dense_then_halve" and config.prune.sparsity > 0.5:
      raise UserError("dense_then_halve prunes at most half")

  @registry.register("dense_then_halve", validate=validate)
  def dense_then_halve(exp, recorder):
    dense_run = yield from common.dense(exp, recorder)
    m = common.prune(exp, dense_run.state.params, dense_run.state.masks, exp.config.prune.sparsity, "halve")
    recorder(exp.record(dense_run.state.replace(masks=m), [], "dense_then_halve", 1, None, None, 0.0),
             dense_run.state, None)

  with pytest.raises(UserError, match="at most half"):
    experiment.validate(small_config(method="dense_then_halve", **{"prune.sparsity": 0.8}))
  out = Collect()
  methods.run([experiment.build(small_config(method="dense_then_halve", **{"prune.sparsity": 0.5}))], [out])
  assert [r["method"] for r in out.records] == ["dense", "dense_then_halve"]
  assert out.records[1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
