"""Calibration metrics for classifiers: ECE, MCE, UCE, NLL, Brier and temperature scaling.

Inputs are host-side arrays computed after evaluation: `probs` of shape (N, C) holding softmax
probabilities (rows sum to 1) and integer `labels` of shape (N,). Everything is computed in
float64 numpy; the functions return Python floats (or numpy arrays for per-bin data).

Conventions:
  * Prediction = argmax of `probs` (first index on ties, as `np.argmax`); confidence = max of
    `probs`; correct = (prediction == label).
  * Binning: `num_bins` equal-width bins over [0, 1] with edges `bin_edges(num_bins)` =
    `np.linspace(0, 1, num_bins + 1)`. Bin i holds the values in (edges[i], edges[i + 1]]: right
    closed, so a value exactly on an inner edge goes to the lower bin. This is the convention of
    Guo et al.'s (2017) reference code (`conf > lower and conf <= upper`). That code drops a value of
    exactly 0; here it goes into the first bin, which never matters for confidences (max softmax
    >= 1/C) but does for UCE, where a one-hot prediction has uncertainty exactly 0.
    Comparisons are made against the float64 edge array itself, so "on the edge" means equal to
    `bin_edges(num_bins)[i]`.
  * Empty bins contribute nothing to ECE/UCE, are ignored by MCE, and report nan mean confidence
    and accuracy in `reliability`.
  * UCE (Laves et al., 2019): uncertainty = normalised predictive entropy H(p) / log(C) in [0, 1]
    (natural log, 0 log 0 = 0), error = 1 - correct, binned over uncertainty with the same rule.
"""

import numpy as np

from lth_jax.errors import require

# NLL clips the probability of the true label to at least this, so a confidently wrong
# prediction (p = 0 from float underflow) costs -log(1e-12) ~ 27.6 nats instead of inf.
NLL_EPS = 1e-12

# Temperature scaling searches T in this range (log-spaced).
T_MIN, T_MAX = 1e-2, 1e2


def _validate(probs, labels, name: str = "probs") -> tuple[np.ndarray, np.ndarray]:
  probs = np.asarray(probs, dtype=np.float64)
  labels = np.asarray(labels)
  require(probs.ndim == 2, f"{name} must have shape (N, C), got shape {probs.shape}")
  require(labels.ndim == 1 and labels.shape[0] == probs.shape[0],
        f"labels must have shape ({probs.shape[0]},) to match {name} {probs.shape}, got {labels.shape}")
  require(probs.shape[0] > 0, f"{name} is empty: calibration needs at least one example")
  require(np.issubdtype(labels.dtype, np.integer), f"labels must be integers, got dtype {labels.dtype}")
  require(bool(np.all((labels >= 0) & (labels < probs.shape[1]))),
        f"labels must lie in [0, {probs.shape[1] - 1}] for {probs.shape[1]} classes")
  return probs, labels.astype(np.int64)


def _check_bins(num_bins) -> int:
  require(isinstance(num_bins, (int, np.integer)) and num_bins >= 1,
        f"num_bins must be an integer >= 1, got {num_bins!r}")
  return int(num_bins)


def bin_edges(num_bins: int) -> np.ndarray:
  """The num_bins + 1 edges 0, 1/B, ..., 1 (float64); bin i is (edges[i], edges[i+1]]."""
  return np.linspace(0.0, 1.0, _check_bins(num_bins) + 1)


def bin_index(values, num_bins: int) -> np.ndarray:
  """Bin of each value in [0, 1] under the right-closed convention; 0 goes into bin 0.

  Values slightly outside [0, 1] from round-off land in the first or last bin.
  """
  edges = bin_edges(num_bins)
  # side='left' gives the i with edges[i-1] < v <= edges[i], i.e. bin i - 1.
  idx = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="left") - 1
  return np.clip(idx, 0, len(edges) - 2)


def _binned(values, targets, num_bins: int) -> dict:
  """Per-bin count and means of `values` (binned on) and `targets`; nan means for empty bins."""
  num_bins = _check_bins(num_bins)
  idx = bin_index(values, num_bins)
  count = np.bincount(idx, minlength=num_bins)
  sum_v = np.bincount(idx, weights=values, minlength=num_bins)
  sum_t = np.bincount(idx, weights=targets, minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_v = np.where(count > 0, sum_v / count, np.nan)
    mean_t = np.where(count > 0, sum_t / count, np.nan)
  return {"value": mean_v, "target": mean_t, "count": count, "edges": bin_edges(num_bins)}


def _weighted_gap(b: dict) -> float:
  """sum_b (n_b / N) |target_b - value_b| over non-empty bins."""
  nonempty = b["count"] > 0
  weights = b["count"][nonempty] / b["count"].sum()
  return float(np.sum(weights * np.abs(b["target"][nonempty] - b["value"][nonempty])))


def confidences(probs) -> np.ndarray:
  """The top-class probability of each row of `probs` (N, classes), as float64."""
  return np.max(np.asarray(probs, dtype=np.float64), axis=1)


def correct(probs, labels) -> np.ndarray:
  """1.0 where argmax(probs) == label, else 0.0 (float64)."""
  return (np.argmax(np.asarray(probs), axis=1) == np.asarray(labels)).astype(np.float64)


def accuracy(probs, labels) -> float:
  """The fraction of rows whose top class is the label."""
  probs, labels = _validate(probs, labels)
  return float(np.mean(correct(probs, labels)))


def reliability(probs, labels, num_bins: int = 15) -> dict:
  """Reliability-diagram data over confidence bins.

  Returns a dict of float64/int arrays: `confidence` (mean confidence per bin, nan if empty),
  `accuracy` (mean correctness per bin, nan if empty), `count` (examples per bin, int) and
  `edges` (num_bins + 1 bin edges).
  """
  probs, labels = _validate(probs, labels)
  b = _binned(confidences(probs), correct(probs, labels), num_bins)
  return {"confidence": b["value"], "accuracy": b["target"], "count": b["count"], "edges": b["edges"]}


def ece(probs, labels, num_bins: int = 15) -> float:
  """Expected calibration error: sum_b (n_b / N) |acc_b - conf_b|, in [0, 1]."""
  probs, labels = _validate(probs, labels)
  return _weighted_gap(_binned(confidences(probs), correct(probs, labels), num_bins))


def mce(probs, labels, num_bins: int = 15) -> float:
  """Maximum calibration error: max over non-empty bins of |acc_b - conf_b|."""
  probs, labels = _validate(probs, labels)
  b = _binned(confidences(probs), correct(probs, labels), num_bins)
  nonempty = b["count"] > 0
  return float(np.max(np.abs(b["target"][nonempty] - b["value"][nonempty])))


def normalized_entropy(probs) -> np.ndarray:
  """H(p) / log(C) per row, in [0, 1]; 0 log 0 = 0. Needs C >= 2."""
  probs = np.asarray(probs, dtype=np.float64)
  num_classes = probs.shape[-1]
  require(num_classes >= 2, f"normalised entropy needs at least 2 classes, got {num_classes}")
  plogp = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
  # Round-off can push uniform predictions a hair above 1.
  return np.clip(-plogp.sum(axis=-1) / np.log(num_classes), 0.0, 1.0)


def uce(probs, labels, num_bins: int = 15) -> float:
  """Uncertainty calibration error (Laves et al., 2019): sum_b (n_b / N) |err_b - unc_b|.

  Uncertainty is the normalised entropy H(p) / log(C); error is 1 - correct.
  """
  probs, labels = _validate(probs, labels)
  return _weighted_gap(_binned(normalized_entropy(probs), 1.0 - correct(probs, labels), num_bins))


def nll(probs, labels) -> float:
  """Mean negative log-likelihood (nats) of the true label; probabilities clipped at NLL_EPS."""
  probs, labels = _validate(probs, labels)
  p_true = probs[np.arange(len(labels)), labels]
  return float(-np.mean(np.log(np.clip(p_true, NLL_EPS, 1.0))))


def brier(probs, labels) -> float:
  """Mean over examples of sum_c (p_c - onehot_c)^2, in [0, 2]."""
  probs, labels = _validate(probs, labels)
  onehot = np.eye(probs.shape[1])[labels]
  return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def _log_softmax(logits) -> np.ndarray:
  z = np.asarray(logits, dtype=np.float64)
  z = z - np.max(z, axis=-1, keepdims=True)
  return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
  """softmax(logits / temperature) over the last axis, float64, stable (max subtracted)."""
  require(temperature > 0, f"temperature must be > 0, got {temperature}")
  return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def _nll_at(logits: np.ndarray, labels: np.ndarray, log_t: float) -> float:
  # Computed from logits (log-softmax), not clipped probabilities, so the objective is smooth.
  logp = _log_softmax(logits / np.exp(log_t))
  return float(-np.mean(logp[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels, grid_points: int = 41, tol: float = 1e-7) -> float:
  """Temperature scaling (Guo et al., 2017): the T > 0 minimising NLL of softmax(logits / T).

  NLL is convex in 1/T (a log-sum-exp of functions linear in 1/T minus a linear term), hence
  unimodal in log T. We evaluate a log-spaced grid over [T_MIN, T_MAX], then refine by
  golden-section search on log T between the grid neighbours of the best point, to `tol` in log T.
  If the minimum lies outside the range (e.g. perfectly separable logits want T -> 0), the
  returned T is the nearest end of the range.
  """
  logits, labels = _validate(logits, labels, name="logits")
  lo, hi = np.log(T_MIN), np.log(T_MAX)
  grid = np.linspace(lo, hi, grid_points)
  values = [_nll_at(logits, labels, g) for g in grid]
  best = int(np.argmin(values))
  a, b = grid[max(best - 1, 0)], grid[min(best + 1, grid_points - 1)]
  inv_phi = (np.sqrt(5.0) - 1.0) / 2.0
  c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
  fc, fd = _nll_at(logits, labels, c), _nll_at(logits, labels, d)
  while b - a > tol:
    if fc <= fd:
      b, d, fd = d, c, fc
      c = b - inv_phi * (b - a)
      fc = _nll_at(logits, labels, c)
    else:
      a, c, fc = c, d, fd
      d = a + inv_phi * (b - a)
      fd = _nll_at(logits, labels, d)
  # Keep the grid point if the bracket refinement did not beat it (a flat objective).
  x = (a + b) / 2.0
  if values[best] < _nll_at(logits, labels, x):
    x = grid[best]
  return float(np.exp(x))


def summary(probs, labels, num_bins: int = 15) -> dict:
  """Stable results.json fields: ece, mce, uce, nll, brier, accuracy (Python floats)."""
  probs, labels = _validate(probs, labels)
  return {
      "ece": ece(probs, labels, num_bins),
      "mce": mce(probs, labels, num_bins),
      "uce": uce(probs, labels, num_bins),
      "nll": nll(probs, labels),
      "brier": brier(probs, labels),
      "accuracy": accuracy(probs, labels),
  }
