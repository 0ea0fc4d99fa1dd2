"""Functional similarity of two networks' predictive distributions (Lost in Pruning's eps-ball).

`p` and `q` are (N, K) probabilities of the same N inputs; each figure is a mean over the inputs.
"""

import numpy as np


def summary(p: np.ndarray, q: np.ndarray) -> dict:
  """l2 and linf distance between the distributions, and the fraction of equal top-1 predictions."""
  return {"l2": float(np.mean(np.linalg.norm(p - q, axis=-1))),
          "linf": float(np.mean(np.max(np.abs(p - q), axis=-1))),
          "agreement": float(np.mean(p.argmax(-1) == q.argmax(-1)))}
