"""Out-of-distribution (OOD) detection: scores, threshold-free metrics and synthetic OOD inputs.

Conventions:
  * A score is "higher means more in-distribution". `max_softmax` (MSP, Hendrycks & Gimpel 2017)
    already is; `entropy` is higher for OOD, so pass `-entropy(probs)` to the metrics.
  * The positive class for `auroc`, `aupr_in` and `fpr_at_tpr` is in-distribution. `aupr_out`
    treats OOD as positive and ranks by the negated score.
  * `auroc` is the Mann-Whitney statistic P(s_in > s_out) + P(s_in = s_out) / 2, computed exactly
    from counts (no curve integration), so ties are handled exactly.
  * `aupr_in` / `aupr_out` are average precision as sklearn's `average_precision_score`:
    sum_k (R_k - R_{k-1}) P_k over thresholds at the distinct score values, no interpolation.
  * `fpr_at_tpr` accepts a sample as in-distribution when score >= t, picks the largest t whose
    TPR (fraction of in-distribution samples accepted) is >= `tpr`, and returns the fraction of
    OOD samples accepted at that t. This equals sklearn's `roc_curve` FPR at the first point
    with TPR >= `tpr` (no interpolation between ROC points).

Everything runs on host arrays in float64 numpy; metrics return Python floats.
"""

import numpy as np

from lth_jax.errors import require


# --- scores -----------------------------------------------------------------------------------


def max_softmax(probs) -> np.ndarray:
  """Maximum softmax probability per row (MSP); higher = more in-distribution."""
  return np.max(np.asarray(probs, dtype=np.float64), axis=-1)


def entropy(probs) -> np.ndarray:
  """Predictive entropy in nats per row, 0 log 0 = 0; higher = more OOD."""
  p = np.asarray(probs, dtype=np.float64)
  plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  return -np.sum(plogp, axis=-1)


# --- metrics ----------------------------------------------------------------------------------


def _scores(scores_in, scores_out) -> tuple[np.ndarray, np.ndarray]:
  s_in = np.asarray(scores_in, dtype=np.float64).ravel()
  s_out = np.asarray(scores_out, dtype=np.float64).ravel()
  require(s_in.size > 0 and s_out.size > 0,
        f"OOD metrics need at least one in- and one out-of-distribution score, got {s_in.size} and {s_out.size}")
  require(not (np.isnan(s_in).any() or np.isnan(s_out).any()), "OOD scores must not contain nan")
  return s_in, s_out


def auroc(scores_in, scores_out) -> float:
  """P(random in-dist score > random OOD score) + P(equal) / 2, exact (Mann-Whitney U / n_in n_out)."""
  s_in, s_out = _scores(scores_in, scores_out)
  s_out = np.sort(s_out)
  below = np.searchsorted(s_out, s_in, side="left")        # OOD scores strictly below each in-score
  below_or_tie = np.searchsorted(s_out, s_in, side="right")  # ... below or tied
  # (below + below_or_tie) / 2 = wins + ties / 2; summed as integers so the count is exact.
  twice_u = int(np.sum(below, dtype=np.int64) + np.sum(below_or_tie, dtype=np.int64))
  return twice_u / (2.0 * s_in.size * s_out.size)


def average_precision(scores_pos, scores_neg) -> float:
  """Average precision with `scores_pos` as the positive class, higher score = more positive.

  Thresholds at each distinct score (all samples tied at a score enter together), as sklearn.
  """
  s_pos, s_neg = _scores(scores_pos, scores_neg)
  scores = np.concatenate([s_pos, s_neg])
  is_pos = np.concatenate([np.ones(s_pos.size), np.zeros(s_neg.size)])
  order = np.argsort(-scores, kind="stable")
  scores, is_pos = scores[order], is_pos[order]
  # Last index of each run of equal scores: the point where that threshold's samples are all in.
  last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
  tp = np.cumsum(is_pos)[last]
  predicted = last + 1.0
  precision = tp / predicted
  recall = tp / s_pos.size
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def aupr_in(scores_in, scores_out) -> float:
  """Average precision with in-distribution as positive (higher score = in-distribution)."""
  return average_precision(scores_in, scores_out)


def aupr_out(scores_in, scores_out) -> float:
  """Average precision with OOD as positive, ranked by the negated score."""
  s_in, s_out = _scores(scores_in, scores_out)
  return average_precision(-s_out, -s_in)


def fpr_at_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
  """Fraction of OOD scores >= t, t the largest threshold accepting >= `tpr` of in-dist scores.

  With in-scores sorted descending, t is the k-th largest, k = ceil(tpr * n_in): fewer than k
  in-scores are > t, and at least k are >= t.
  """
  require(0.0 < tpr <= 1.0, f"tpr must be in (0, 1], got {tpr}")
  s_in, s_out = _scores(scores_in, scores_out)
  # Rounding before ceil stops float error (0.07 * 100 = 7.000000000000001) from adding one.
  k = int(np.ceil(np.round(tpr * s_in.size, 9)))
  k = min(max(k, 1), s_in.size)
  threshold = np.sort(s_in)[::-1][k - 1]
  return float(np.mean(s_out >= threshold))


def metrics(scores_in, scores_out, prefix: str = "") -> dict:
  """auroc, aupr_in, aupr_out, fpr95 for one score, keys prefixed with `prefix`."""
  return {
      f"{prefix}auroc": auroc(scores_in, scores_out),
      f"{prefix}aupr_in": aupr_in(scores_in, scores_out),
      f"{prefix}aupr_out": aupr_out(scores_in, scores_out),
      f"{prefix}fpr95": fpr_at_tpr(scores_in, scores_out, 0.95),
  }


def summary(probs_in, probs_out) -> dict:
  """Stable results.json fields for MSP and (negated) entropy scores:

  msp_auroc, msp_aupr_in, msp_aupr_out, msp_fpr95,
  entropy_auroc, entropy_aupr_in, entropy_aupr_out, entropy_fpr95.
  """
  return {
      **metrics(max_softmax(probs_in), max_softmax(probs_out), "msp_"),
      **metrics(-entropy(probs_in), -entropy(probs_out), "entropy_"),
  }


# --- synthetic OOD inputs ---------------------------------------------------------------------


def _rng(key_or_seed) -> np.random.Generator:
  """A numpy Generator from an int seed or a JAX PRNG key (raw uint32 or typed)."""
  if isinstance(key_or_seed, (int, np.integer)):
    return np.random.default_rng(int(key_or_seed))
  import jax  # Only for keys; the rest of the module is numpy.
  key = key_or_seed
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.random.default_rng(np.asarray(key).astype(np.uint32).ravel().tolist())


def _channel_range(x) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (last axis) min and max over all other axes, as float64."""
  x = np.asarray(x, dtype=np.float64)
  require(x.ndim >= 2 and x.size > 0, f"x must be a non-empty batch (N, ..., C), got shape {x.shape}")
  axes = tuple(range(x.ndim - 1))
  return x.min(axis=axes), x.max(axis=axes)


def gaussian_noise_like(key_or_seed, x, std: float = 1.0) -> np.ndarray:
  """Gaussian-noise inputs shaped like `x`, clipped to x's per-channel range [lo, hi].

  Per channel: lo + (hi - lo) * clip(N(0.5, std^2), 0, 1). For data in [0, 1] and std=1 this is
  Hendrycks et al.'s Outlier Exposure baseline, N(0.5, 1) clipped to [0, 1]. Same dtype as x
  (float32 for non-float x).
  """
  lo, hi = _channel_range(x)
  u = np.clip(_rng(key_or_seed).normal(0.5, std, size=np.shape(x)), 0.0, 1.0)
  return (lo + (hi - lo) * u).astype(_float_dtype(x))


def uniform_noise_like(key_or_seed, x) -> np.ndarray:
  """Uniform-noise inputs shaped like `x`: U[lo, hi] per channel (last axis) over x's range."""
  lo, hi = _channel_range(x)
  u = _rng(key_or_seed).uniform(0.0, 1.0, size=np.shape(x))
  return (lo + (hi - lo) * u).astype(_float_dtype(x))


def _float_dtype(x):
  dtype = np.asarray(x).dtype
  return dtype if np.issubdtype(dtype, np.floating) else np.float32


def far_points(seed, x_train, n: int, scale: float = 3.0, width: float = 1.0) -> np.ndarray:
  """`n` points far from tabular training data `x_train` of shape (N, D), e.g. make_moons (D=2).

  Let c be the training mean and R the largest distance of a training point from c. Points are
  drawn in a shell around c: uniformly random direction, radius uniform in
  [scale * R, (scale + width) * R]. For D=2 this is a ring. Every point is then at least
  (scale - 1) * R from every training point, i.e. (scale - 1)/2 data diameters away, which is why
  `scale` must exceed 1. Returns float32 of shape (n, D).
  """
  x = np.asarray(x_train, dtype=np.float64)
  require(x.ndim == 2 and x.shape[0] > 0, f"x_train must have shape (N, D), got {x.shape}")
  require(scale > 1.0, f"scale must be > 1 so points lie outside the data, got {scale}")
  require(width >= 0.0, f"width must be >= 0, got {width}")
  require(isinstance(n, (int, np.integer)) and n >= 0, f"n must be an integer >= 0, got {n!r}")
  rng = _rng(seed)
  center = x.mean(axis=0)
  radius = np.max(np.linalg.norm(x - center, axis=1))
  radius = radius if radius > 0 else 1.0  # All training points equal: use unit scale.
  # Normalised Gaussian vectors are uniform on the sphere in any dimension.
  direction = rng.normal(size=(n, x.shape[1]))
  direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
  r = radius * rng.uniform(scale, scale + width, size=(n, 1))
  return (center + r * direction).astype(np.float32)
