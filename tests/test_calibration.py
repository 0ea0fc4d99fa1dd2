import numpy as np
import pytest

from lth_jax.metrics import calibration as cal


def _hand_case():
  # 4 examples, 3 classes. Confidence (max prob), correct?
  #   [0.40, 0.30, 0.30] label 0 -> conf 0.40, right
  #   [0.45, 0.35, 0.20] label 1 -> conf 0.45, wrong
  #   [0.60, 0.30, 0.10] label 0 -> conf 0.60, right
  #   [0.10, 0.90, 0.00] label 2 -> conf 0.90, wrong
  probs = np.array([[0.40, 0.30, 0.30], [0.45, 0.35, 0.20], [0.60, 0.30, 0.10], [0.10, 0.90, 0.00]])
  labels = np.array([0, 1, 0, 2])
  return probs, labels


def test_bin_edges_and_index_convention():
  np.testing.assert_array_equal(cal.bin_edges(4), [0.0, 0.25, 0.5, 0.75, 1.0])
  # Right-closed bins (i/B, (i+1)/B]: an edge value goes to the lower bin; 0 goes to bin 0.
  np.testing.assert_array_equal(cal.bin_index([0.0, 0.25, 0.26, 0.5, 0.75, 1.0], 4), [0, 0, 1, 1, 2, 3])
  # Every float64 edge from linspace goes to the bin below it, even when i/B is not exact.
  edges = cal.bin_edges(15)
  np.testing.assert_array_equal(cal.bin_index(edges[1:], 15), np.arange(15))


def test_confidence_on_edge_goes_to_lower_bin():
  # Uniform over 2 classes: confidence exactly 0.5, the edge of 2 bins -> bin 0.
  r = cal.reliability(np.full((3, 2), 0.5), np.array([0, 0, 1]), num_bins=2)
  np.testing.assert_array_equal(r["count"], [3, 0])
  assert r["confidence"][0] == 0.5
  assert r["accuracy"][0] == pytest.approx(2 / 3)


def test_perfectly_calibrated_is_zero():
  # Confidence 0.8 on all 10 examples and exactly 8 of them right: one bin, acc = conf.
  probs = np.tile([0.8, 0.2], (10, 1))
  labels = np.array([0] * 8 + [1] * 2)
  assert cal.ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
  assert cal.mce(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_fully_overconfident():
  # Confidence 1 everywhere, half right: |0.5 - 1| in the last bin.
  probs = np.tile([1.0, 0.0], (6, 1))
  labels = np.array([0, 1, 0, 1, 0, 1])
  assert cal.ece(probs, labels) == pytest.approx(0.5)
  assert cal.mce(probs, labels) == pytest.approx(0.5)
  assert cal.reliability(probs, labels)["count"][-1] == 6


def test_hand_case_two_bins():
  # Bins (0, .5], (.5, 1].
  #   bin 0: confs .40, .45 -> mean .425; acc 1/2; gap .075; weight 2/4
  #   bin 1: confs .60, .90 -> mean .75;  acc 1/2; gap .25;  weight 2/4
  # ECE = .5 * .075 + .5 * .25 = .1625; MCE = .25.
  probs, labels = _hand_case()
  assert cal.ece(probs, labels, num_bins=2) == pytest.approx(0.1625, abs=1e-12)
  assert cal.mce(probs, labels, num_bins=2) == pytest.approx(0.25, abs=1e-12)
  r = cal.reliability(probs, labels, num_bins=2)
  np.testing.assert_allclose(r["confidence"], [0.425, 0.75])
  np.testing.assert_allclose(r["accuracy"], [0.5, 0.5])
  np.testing.assert_array_equal(r["count"], [2, 2])


def test_empty_bin_is_nan_and_does_not_contribute():
  # 4 bins (0,.25], (.25,.5], (.5,.75], (.75,1]: bin 0 is empty.
  #   bin 1: .40, .45 -> conf .425, acc .5, weight 2/4 -> .0375
  #   bin 2: .60 right -> |1 - .6| = .4,   weight 1/4 -> .1
  #   bin 3: .90 wrong -> |0 - .9| = .9,   weight 1/4 -> .225
  # ECE = .3625; MCE = .9.
  probs, labels = _hand_case()
  r = cal.reliability(probs, labels, num_bins=4)
  np.testing.assert_array_equal(r["count"], [0, 2, 1, 1])
  assert np.isnan(r["confidence"][0]) and np.isnan(r["accuracy"][0])
  assert not np.isnan(r["confidence"][1:]).any()
  assert len(r["edges"]) == 5
  assert cal.ece(probs, labels, num_bins=4) == pytest.approx(0.3625, abs=1e-12)
  assert cal.mce(probs, labels, num_bins=4) == pytest.approx(0.9, abs=1e-12)


def test_uce_uniform_and_one_hot():
  uniform = np.full((8, 4), 0.25)  # normalised entropy 1; argmax is class 0
  assert cal.uce(uniform, np.full(8, 1)) == pytest.approx(0.0, abs=1e-12)  # all wrong: err 1 = unc 1
  assert cal.uce(uniform, np.full(8, 0)) == pytest.approx(1.0, abs=1e-12)  # all right: err 0, unc 1
  # One-hot and right: uncertainty exactly 0 (first bin), error 0.
  one_hot = np.eye(4)[[0, 1, 2, 3]]
  assert cal.uce(one_hot, np.arange(4)) == 0.0
  np.testing.assert_allclose(cal.normalized_entropy(uniform), 1.0)


def test_nll_and_brier_hand_case():
  # [.5, .25, .25] label 0: -log .5 = log 2; Brier .25 + .0625 + .0625 = .375
  # [.25, .5, .25] label 2: -log .25 = log 4; Brier .0625 + .25 + .5625 = .875
  probs = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]])
  labels = np.array([0, 2])
  assert cal.nll(probs, labels) == pytest.approx(1.5 * np.log(2.0), abs=1e-12)
  assert cal.brier(probs, labels) == pytest.approx(0.625, abs=1e-12)


def test_nll_clips_zero_probability():
  assert cal.nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(cal.NLL_EPS))


def test_softmax_stable_and_temperature():
  p = cal.softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
  np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5]])
  z = np.array([[2.0, 0.0, -1.0]])
  np.testing.assert_allclose(cal.softmax(z, temperature=2.0), cal.softmax(z / 2.0))
  with pytest.raises(ValueError):
    cal.softmax(z, temperature=0.0)


def _generative(n=20000, c=10, seed=0):
  rng = np.random.default_rng(seed)
  z = 1.5 * rng.normal(size=(n, c))
  p = cal.softmax(z)
  labels = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)  # one draw from each row
  return z, np.minimum(labels, c - 1)


def test_fit_temperature_recovers_two():
  # Labels drawn from softmax(z); the model reports 2z, so T = 2 undoes it.
  z, labels = _generative()
  t = cal.fit_temperature(2.0 * z, labels)
  assert abs(t - 2.0) < 0.15
  assert abs(cal.fit_temperature(z, labels) - 1.0) < 0.075
  # T minimises NLL: nearby temperatures do no better.
  best = cal.nll(cal.softmax(2.0 * z, t), labels)
  for other in (t * 0.95, t * 1.05):
    assert best <= cal.nll(cal.softmax(2.0 * z, other), labels)


def test_fit_temperature_separable_hits_lower_end():
  logits = np.array([[5.0, 0.0], [0.0, 5.0]])
  assert cal.fit_temperature(logits, np.array([0, 1])) == pytest.approx(cal.T_MIN, rel=1e-3)


def test_summary_keys_and_values():
  probs, labels = _hand_case()
  s = cal.summary(probs, labels, num_bins=2)
  assert set(s) == {"ece", "mce", "uce", "nll", "brier", "accuracy"}
  assert all(isinstance(v, float) for v in s.values())
  assert s["accuracy"] == 0.5
  assert s["ece"] == pytest.approx(0.1625)


def test_bad_inputs_raise_user_error():
  with pytest.raises(ValueError):
    cal.ece(np.ones((3, 2)) / 2, np.array([0, 1]))
  with pytest.raises(ValueError):
    cal.ece(np.ones((2, 2)) / 2, np.array([0, 2]))
  with pytest.raises(ValueError):
    cal.ece(np.ones((2, 2)) / 2, np.array([0, 1]), num_bins=0)
