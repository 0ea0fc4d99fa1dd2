import numpy as np
import pytest

from lth_jax import evaluation, experiment
from lth_jax.errors import UserError
from lth_jax.methods import common
from lth_jax.metrics import potential
from tests.helpers import Collect, drive, oneshot, small_config


def test_match_shape_grey_to_colour_and_down():
  x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
  y = evaluation.match_shape(x, (8, 8, 3))
  assert y.shape == (2, 8, 8, 3)
  assert np.array_equal(y[:, ::2, ::2, 0], x[..., 0]) and np.array_equal(y[..., 0], y[..., 2])
  z = evaluation.match_shape(np.stack([x[..., 0], 3 * x[..., 0], 2 * x[..., 0]], -1), (2, 2, 1))
  assert z.shape == (2, 2, 2, 1) and z[0, 1, 1, 0] == 2 * x[0, 2, 2, 0]   # mean of (v, 3v, 2v) = 2v


def run(accuracy, sparsity, method, corr=None):
  r = {"method": method, "sparsity": sparsity, "test_accuracy": accuracy}
  if corr is not None:
    r["corruptions"] = {"blur": {"1": {"accuracy": corr[0]}, "2": {"accuracy": corr[1]}}}
    r["corruption_accuracy"] = (corr[0] + corr[1]) / 2
  return r


def test_prune_potential_and_excess_error_by_hand():
  runs = [run(0.90, 0.0, "dense", (0.80, 0.70)),
          run(0.899, 0.5, "oneshot", (0.74, 0.66)),    # nominal within 0.5%, blur 5% worse
          run(0.896, 0.8, "oneshot", (0.60, 0.50)),    # nominal error 0.104 <= 0.1 + 0.005
          run(0.80, 0.9, "oneshot", (0.50, 0.40))]
  summary = potential.summarize(runs, 0.005)
  assert summary["prune_potential"]["oneshot"]["nominal"] == 0.8
  assert summary["prune_potential"]["oneshot"]["blur"] == 0.0        # no pruned run within delta on blur
  # excess error = (dense_acc(d) - acc(d)) - (dense_acc(nominal) - acc(nominal))
  assert runs[1]["excess_error"]["blur"] == pytest.approx((0.75 - 0.70) - (0.90 - 0.899))
  assert runs[2]["excess_error"]["corruptions"] == pytest.approx((0.75 - 0.55) - (0.90 - 0.896))


def test_every_run_reports_calibration_ood_and_similarity():
  cfg = small_config(**{"metrics.ood": ("uniform_noise", "far_points"), "metrics.similarity_eps": (0.0, 0.3)})
  exp = experiment.build(cfg)
  out = Collect()
  dense = drive(common.dense(exp, out))
  oneshot(exp, dense, 0.9, out, reset="random")
  d, p = out.records
  assert d["similarity"]["0"] == {"l2": 0.0, "linf": 0.0, "agreement": 1.0}   # dense against itself
  assert p["similarity"]["0"]["agreement"] < 1.0 or p["similarity"]["0"]["l2"] > 0
  for r in (d, p):
    assert set(r["ood"]) == {"uniform_noise", "far_points"}
    assert 0.0 <= r["ood"]["far_points"]["msp_auroc"] <= 1.0
    assert r["temperature"] > 0 and r["ece_ts"] >= 0
    assert sum(r["reliability"]["count"]) == len(exp.raw_test[1])
  # Wiring: the figure is ood.auroc of the float64 max-softmax scores of the evaluator's test subset
  # against its far points, under the dense network. (ReLU networks are often *more* confident far
  # from the data, so no direction is asserted.)
  from lth_jax.metrics import calibration, ood
  trainer = exp.trainer(exp.config.train.epochs)
  logits_in = np.asarray(trainer.logits(dense.state, exp.data["test"][0]), np.float64)[exp.evaluator.indices]
  probs_in = calibration.softmax(logits_in)
  probs_out = calibration.softmax(np.asarray(trainer.logits(dense.state, exp.evaluator.ood_sets["far_points"]),
                                             np.float64))
  assert d["ood"]["far_points"]["msp_auroc"] == pytest.approx(
      ood.auroc(ood.max_softmax(probs_in), ood.max_softmax(probs_out)), abs=1e-6)


def test_bad_metric_settings_are_user_errors():
  with pytest.raises(UserError, match="config.metrics.ood holds 'nope'"):
    experiment.build(small_config(**{"metrics.ood": ("nope",)})).evaluator
  with pytest.raises(UserError, match="needs image data"):
    experiment.build(small_config(**{"metrics.corruptions": ("contrast",)})).evaluator


def test_corruptions_are_evaluated_per_severity(tmp_path):
  cfg = small_config(**{"metrics.corruptions": ("contrast", "gaussian_noise"), "metrics.severities": (1, 5),
                        "metrics.max_examples": 100, "metrics.ood": ("uniform_noise", "digits")})
  cfg.data.name = "digits"
  exp = experiment.build(cfg)
  out = Collect()
  drive(common.dense(exp, out))
  r = out.records[0]
  assert set(r["corruptions"]) == {"contrast", "gaussian_noise"}
  assert set(r["corruptions"]["contrast"]) == {"1", "5"}
  cells = [c["accuracy"] for s in r["corruptions"].values() for c in s.values()]
  assert r["corruption_accuracy"] == pytest.approx(np.mean(cells))
  assert r["corruptions"]["contrast"]["5"]["accuracy"] <= r["corruptions"]["contrast"]["1"]["accuracy"] + 0.05
  assert r["ood"]["digits"]["msp_auroc"] == pytest.approx(0.5, abs=0.1)   # the same distribution: no signal


def test_shifted_sets_report_accuracy_ece_and_enter_prune_potential():
  cfg = small_config(**{"metrics.shifted": ("digits",), "metrics.ood": (), "metrics.max_examples": 150})
  cfg.data.name = "digits"
  exp = experiment.build(cfg)
  out = Collect()
  dense = drive(common.dense(exp, out))
  oneshot(exp, dense, 0.5, out)
  for r in out.records:
    # the "shifted" set is the same test split here, so its figures equal the nominal ones on those rows
    x, y = exp.evaluator.shifted["digits"]
    assert len(y) == 150 and np.array_equal(y, exp.evaluator.labels)   # the same stratified subset
    assert 0 <= r["shifted"]["digits"]["accuracy"] <= 1 and r["shifted"]["digits"]["ece"] >= 0
  summary = potential.summarize(out.records, 1.0)
  assert summary["prune_potential"]["oneshot"]["digits"] == pytest.approx(out.records[1]["sparsity"])
  with pytest.raises(UserError, match="config.metrics.shifted holds 'nope'"):
    experiment.build(small_config(**{"metrics.shifted": ("nope",)})).evaluator
