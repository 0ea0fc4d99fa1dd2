"""Lottery-ticket pruning in your own Flax loop: a CNN on scikit-learn's 8x8 digits, no network needed.

Iterative magnitude pruning with rewinding to theta_0: train dense, then each round remove the
smallest-magnitude 1 - (1 - 0.8)^(1/rounds) of the remaining kernel weights (one global ranking),
rewind the survivors to their initial values and retrain. The only lth_jax pieces are the mask
functions, `pruning.magnitude`, the calibration metrics and the optax wrapper `keep_pruned`.

    python examples/own_loop.py
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from lth_jax.metrics import calibration
from lth_jax.sparsity import masks, pruning
from lth_jax.sparsity.optax import keep_pruned, with_masks

TARGET_SPARSITY = 0.8
BATCH_SIZE = 64


class CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10)(x)


def digits(seed):
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)  # pixel values are 0..16
  return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


@jax.jit
def train_step(state, x, y):
  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))


@jax.jit
def logits_of(state, x):
  return state.apply_fn({"params": state.params}, x)


def train(state, x, y, epochs, rng):
  for _ in range(epochs):
    order = rng.permutation(len(x))
    for i in range(0, len(x) - BATCH_SIZE + 1, BATCH_SIZE):  # drop the ragged last batch: one shape, one compile
      batch = order[i:i + BATCH_SIZE]
      state = train_step(state, x[batch], y[batch])
  return state


def evaluate(state, x, y):
  probs = calibration.softmax(np.asarray(logits_of(state, x)))
  return calibration.accuracy(probs, y), calibration.ece(probs, y, num_bins=15)


def main(epochs=10, rounds=3, seed=0):
  """One dict per pruning round 1..rounds (the dense round 0 is only printed)."""
  x_train, x_test, y_train, y_test = digits(seed)
  rng = np.random.default_rng(seed)
  model = CNN()
  # jit: run eagerly, the initialisers compile one small program per op.
  theta_0 = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 8, 8, 1)))["params"]
  which = masks.prunable(theta_0)
  rate = pruning.rate_per_round(TARGET_SPARSITY, rounds)
  m = masks.init(theta_0)
  # One TrainState for all rounds: the masks live in its opt_state, so train_step compiles once.
  start = train_state.TrainState.create(apply_fn=model.apply, params=theta_0,
                                        tx=keep_pruned(optax.sgd(0.05, momentum=0.9), m))
  state = train(start, x_train, y_train, epochs, rng)
  accuracy, ece = evaluate(state, x_test, y_test)
  print(f"round 0  sparsity 0.000  test accuracy {accuracy:.4f}  ECE {ece:.4f}  (dense)")

  results = []
  for r in range(1, rounds + 1):
    m = pruning.magnitude(state.params, m, rate, scope="global", which=which)
    # Rewind: the surviving weights go back to theta_0, the momentum starts afresh.
    state = start.replace(params=masks.apply(theta_0, m),
                          opt_state=with_masks(start.opt_state, m, params=theta_0, tx=start.tx))
    state = train(state, x_train, y_train, epochs, rng)
    accuracy, ece = evaluate(state, x_test, y_test)
    sparsity = masks.sparsity(m, which)
    print(f"round {r}  sparsity {sparsity:.3f}  test accuracy {accuracy:.4f}  ECE {ece:.4f}")
    results.append({"round": r, "sparsity": sparsity, "test_accuracy": accuracy, "ece": ece,
                    "params": state.params, "masks": m})
  return results


if __name__ == "__main__":
  main()
