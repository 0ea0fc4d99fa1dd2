"""Cross-checks against the reference implementations' conventions (issue 17), each by hand."""

import jax
import numpy as np
import pytest

from lth_jax import evaluation, experiment
from lth_jax.metrics import calibration, ood
from tests.helpers import small_config


class FixedLogits:
  """A trainer stand-in whose logits for any n inputs are the first n rows of `table` (cycled)."""

  def __init__(self, table):
    self.table = np.asarray(table, np.float32)

  def logits(self, state, x):
    return self.table[np.arange(len(x)) % len(self.table)]


def saturating_table(n: int) -> np.ndarray:
  # top logit leads by 10..45: float32's softmax is exactly 1.0 past ~16.6, float64's past ~36.7
  lead = np.linspace(10.0, 45.0, n)
  return np.stack([lead, np.zeros(n), np.full(n, -1.0)], -1)


def test_identical_saturating_logits_on_both_sides_give_auroc_one_half():
  exp = experiment.build(small_config(**{"metrics.ood": ("uniform_noise",), "metrics.max_examples": 0}))
  table = saturating_table(len(exp.raw_test[1]))
  saturated32 = np.asarray(jax.nn.softmax(table, -1)).max(-1) == 1.0
  assert saturated32.sum() > np.sum(table[:, 0] > 37)        # float32 saturates on more rows than float64
  out = exp.evaluator.figures(FixedLogits(table), state=None)["ood"]["uniform_noise"]
  assert out["msp_auroc"] == 0.5 and out["entropy_auroc"] == 0.5
  # and the OOD side's probabilities are float64's, not a float32 softmax saturated to 1.0
  probs = evaluation._probs(table)
  assert probs.dtype == np.float64 and np.sum(probs.max(-1) == 1.0) == np.sum(table[:, 0] > 37)
  assert np.array_equal(ood.max_softmax(probs), ood.max_softmax(calibration.softmax(table)))


def test_stratified_subset_of_a_class_sorted_split_has_every_class_in_proportion():
  labels = np.repeat(np.arange(10), [100] * 9 + [300])     # sorted by class, the last class 3x larger
  keep = evaluation.stratified(labels, 120, seed=3)
  counts = np.bincount(labels[keep], minlength=10)
  assert len(keep) == 120 and len(set(keep)) == 120 and np.all(np.diff(keep) > 0)
  assert counts.tolist() == [10] * 9 + [30]
  assert np.array_equal(keep, evaluation.stratified(labels, 120, seed=3))
  assert not np.array_equal(keep, evaluation.stratified(labels, 120, seed=4))
  assert np.array_equal(evaluation.stratified(labels, 5000, seed=3), np.arange(len(labels)))


def test_evaluator_draws_its_held_out_subset_stratified_and_records_it():
  cfg = small_config(**{"metrics.ood": (), "metrics.max_examples": 20})
  exp = experiment.build(cfg)
  x, y = exp.raw_test
  order = np.argsort(y, kind="stable")
  exp.raw_test = (x[order], y[order])                      # a class-sorted test split
  evaluator = evaluation.Evaluator(exp)
  assert set(evaluator.labels.tolist()) == set(np.unique(y).tolist())
  assert np.array_equal(evaluator.labels, exp.raw_test[1][evaluator.indices])
  exp.data = {**exp.data, "test": (exp.normalize(exp.raw_test[0]), exp.raw_test[1])}
  figures = evaluator.figures(FixedLogits(np.eye(2)), state=None)
  assert figures["heldout_subset"] == {"examples": 20, "of": len(y), "selection": "stratified random",
                                       "seed": cfg.seed}
