import jax
import numpy as np
import pytest
from sklearn import metrics as skm

from lth_jax.metrics import ood


def test_perfectly_separated():
  s_in, s_out = np.array([1.0, 2.0, 3.0]), np.array([-1.0, -2.0])
  assert ood.auroc(s_in, s_out) == 1.0
  assert ood.aupr_in(s_in, s_out) == 1.0
  assert ood.aupr_out(s_in, s_out) == 1.0
  assert ood.fpr_at_tpr(s_in, s_out) == 0.0


def test_reversed_is_worst():
  s_in, s_out = np.array([-1.0, -2.0]), np.array([1.0, 2.0, 3.0])
  assert ood.auroc(s_in, s_out) == 0.0
  assert ood.fpr_at_tpr(s_in, s_out) == 1.0


def test_all_ties():
  s_in, s_out = np.zeros(5), np.zeros(7)
  assert ood.auroc(s_in, s_out) == 0.5
  # One threshold admits everything: precision = share of the positive class.
  assert ood.aupr_in(s_in, s_out) == pytest.approx(5 / 12)
  assert ood.aupr_out(s_in, s_out) == pytest.approx(7 / 12)
  assert ood.fpr_at_tpr(s_in, s_out) == 1.0


def test_hand_case_with_ties():
  s_in, s_out = np.array([3.0, 2.0, 1.0]), np.array([2.0, 0.0])
  # Pairs (in, out): (3,2) win, (3,0) win, (2,2) tie, (2,0) win, (1,2) loss, (1,0) win -> 4.5 / 6.
  assert ood.auroc(s_in, s_out) == 0.75
  # AUPR-In, descending: 3 in | 2 in, 2 out (tied, enter together) | 1 in | 0 out.
  #   t=3: P 1/1, R 1/3;  t=2: P 2/3, R 2/3;  t=1: P 3/4, R 1;  t=0: R stays 1.
  #   AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4 = 29/36.
  assert ood.aupr_in(s_in, s_out) == pytest.approx(29 / 36, abs=1e-15)
  # AUPR-Out on negated scores, descending: 0 out | -1 in | -2 out, -2 in | -3 in.
  #   t=0: P 1, R 1/2;  t=-1: R 1/2;  t=-2: P 2/4, R 1.  AP = 1/2 * 1 + 1/2 * 1/2 = 3/4.
  assert ood.aupr_out(s_in, s_out) == pytest.approx(0.75, abs=1e-15)
  # FPR@TPR: k = ceil(tpr * 3) largest in-score is the threshold; FPR = share of out >= it.
  assert ood.fpr_at_tpr(s_in, s_out, 0.95) == 0.5  # k=3, t=1: out {2}
  assert ood.fpr_at_tpr(s_in, s_out, 0.6) == 0.5   # k=2, t=2: out {2} (tie accepted)
  assert ood.fpr_at_tpr(s_in, s_out, 1 / 3) == 0.0  # k=1, t=3


def test_fpr_exact_multiple_not_rounded_up():
  # 0.07 * 100 is 7.000000000000001 in floats; the threshold must still be the 7th largest.
  s_in = np.arange(100.0)  # 7th largest is 93
  s_out = np.array([92.0, 93.0])
  assert ood.fpr_at_tpr(s_in, s_out, tpr=0.07) == 0.5
  assert ood.fpr_at_tpr(s_in, np.array([4.0, 5.0])) == 0.5  # 95th largest is 5


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(seed, ties):
  rng = np.random.default_rng(seed)
  s_in = rng.normal(1.0, 1.0, size=137)
  s_out = rng.normal(0.0, 1.5, size=211)
  if ties:
    s_in, s_out = np.round(s_in, 0), np.round(s_out, 0)
  y = np.r_[np.ones(s_in.size), np.zeros(s_out.size)]
  s = np.r_[s_in, s_out]
  assert abs(ood.auroc(s_in, s_out) - skm.roc_auc_score(y, s)) < 1e-12
  assert abs(ood.aupr_in(s_in, s_out) - skm.average_precision_score(y, s)) < 1e-12
  assert abs(ood.aupr_out(s_in, s_out) - skm.average_precision_score(1 - y, -s)) < 1e-12
  fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
  assert ood.fpr_at_tpr(s_in, s_out) == pytest.approx(fpr[np.searchsorted(tpr, 0.95, side="left")], abs=1e-12)


def test_scores_and_summary():
  probs_in = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]])
  probs_out = np.full((3, 3), 1 / 3)
  np.testing.assert_allclose(ood.max_softmax(probs_in), [0.9, 0.8])
  np.testing.assert_allclose(ood.entropy(probs_out), np.log(3.0))
  assert ood.entropy(np.array([[1.0, 0.0]]))[0] == 0.0
  s = ood.summary(probs_in, probs_out)
  assert set(s) == {f"{k}_{m}" for k in ("msp", "entropy") for m in ("auroc", "aupr_in", "aupr_out", "fpr95")}
  assert s["msp_auroc"] == 1.0 and s["entropy_auroc"] == 1.0 and s["msp_fpr95"] == 0.0


def test_bad_scores_raise():
  with pytest.raises(ValueError):
    ood.auroc(np.array([]), np.array([1.0]))
  with pytest.raises(ValueError):
    ood.auroc(np.array([np.nan]), np.array([1.0]))
  with pytest.raises(ValueError):
    ood.fpr_at_tpr(np.array([1.0]), np.array([0.0]), tpr=0.0)


def test_noise_like_images():
  x = np.random.default_rng(0).uniform(0.2, 0.7, size=(4, 8, 8, 3)).astype(np.float32)
  for fn in (ood.gaussian_noise_like, ood.uniform_noise_like):
    a = fn(0, x)
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= x.min() and a.max() <= x.max()
    np.testing.assert_array_equal(a, fn(0, x))
    assert not np.array_equal(a, fn(1, x))
    np.testing.assert_array_equal(fn(jax.random.PRNGKey(3), x), fn(jax.random.PRNGKey(3), x))
    np.testing.assert_array_equal(fn(jax.random.key(3), x), fn(jax.random.PRNGKey(3), x))


def test_far_points_are_far_from_moons():
  from sklearn.datasets import make_moons
  x, _ = make_moons(500, noise=0.1, random_state=0)
  far = ood.far_points(0, x, 200, scale=3.0)
  assert far.shape == (200, 2) and far.dtype == np.float32
  radius = np.max(np.linalg.norm(x - x.mean(axis=0), axis=1))
  dist = np.linalg.norm(far[:, None, :] - x[None, :, :], axis=-1).min()
  assert dist >= 2.0 * radius * (1 - 1e-6)
  np.testing.assert_array_equal(far, ood.far_points(0, x, 200, scale=3.0))
  with pytest.raises(ValueError):
    ood.far_points(0, x, 10, scale=1.0)
