"""Linear mode connectivity: the path, its ends and the barrier, by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax.metrics import connectivity


def linear_error(params):
  """A toy 'error' of the weights: the misclassification rate of sign(x @ w) on fixed points."""
  x = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]])
  y = jnp.asarray([1, 1, 1, 0])
  return float(jnp.mean((x @ params["w"] > 0).astype(jnp.int32) != y))


def test_barrier_of_two_identical_weight_sets_is_zero():
  w = {"w": jnp.asarray([0.3, -0.7])}
  curve = connectivity.error_curve(linear_error, w, w, 30)
  assert len(curve) == 30 and len(set(curve)) == 1
  assert connectivity.barrier(curve) == 0.0


def test_path_ends_are_the_two_networks_errors_and_the_middle_is_the_average_weight():
  a, b = {"w": jnp.asarray([1.0, 1.0])}, {"w": jnp.asarray([1.0, -3.0])}
  curve = connectivity.error_curve(linear_error, a, b, 5)
  assert curve[0] == linear_error(a) and curve[-1] == linear_error(b)
  assert curve[2] == linear_error({"w": jnp.asarray([1.0, -1.0])})
  np.testing.assert_array_equal(np.asarray(connectivity.interpolate(a, b, 0.25)["w"]), [1.0, 0.0])


def test_barrier_is_the_peak_above_the_mean_of_the_ends():
  assert connectivity.barrier([0.1, 0.5, 0.3, 0.2]) == pytest.approx(0.5 - 0.15)
  assert connectivity.barrier([0.4, 0.2, 0.1]) == pytest.approx(0.4 - 0.25)
  with pytest.raises(ValueError, match="at least its two ends"):
    connectivity.alphas(1)
