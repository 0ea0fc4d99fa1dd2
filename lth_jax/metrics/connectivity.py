"""Linear mode connectivity (Frankle, Dziugaite, Roy, Carbin 2020): the error along the straight line
between two networks' weights, and its barrier.

`alpha` runs from 0 (the first network) to 1 (the second); the path holds `points` equally spaced
values of it, both ends included. The error barrier is the highest error on the path minus the mean
of the two ends' errors: 0 when the path is flat, as between two identical weight sets.
"""

from typing import Callable

import jax
import numpy as np


def interpolate(params_a, params_b, alpha: float):
  """(1 - alpha) * a + alpha * b, leaf by leaf."""
  return jax.tree.map(lambda a, b: (1.0 - alpha) * a + alpha * b, params_a, params_b)


def alphas(points: int) -> np.ndarray:
  """`points` evenly spaced interpolation weights from 0 to 1, both ends included."""
  if points < 2:
    raise ValueError(f"a path needs at least its two ends; got {points} points")
  return np.linspace(0.0, 1.0, points)


def error_curve(error_fn: Callable, params_a, params_b, points: int) -> list[float]:
  """error_fn(weights) at each point of the path, in order of alpha. `error_fn` may recompute
  BatchNorm statistics for the weights it is given, as the paper does at every point."""
  return [float(error_fn(interpolate(params_a, params_b, a))) for a in alphas(points)]


def barrier(errors) -> float:
  """max(errors) - mean(errors[0], errors[-1]): the instability of the pair."""
  errors = np.asarray(errors, np.float64)
  return float(errors.max() - 0.5 * (errors[0] + errors[-1]))
