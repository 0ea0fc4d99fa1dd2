"""Lottery-ticket pruning in your own Flax NNX loop: `examples/own_loop.py` with an NNX model and nnx.Optimizer.

Iterative magnitude pruning with rewinding to theta_0 on scikit-learn's 8x8 digits: train dense, then each
round remove the smallest-magnitude 1 - (1 - 0.8)^(1/rounds) of the remaining kernel weights (one global
ranking), rewind the survivors to their initial values and retrain. The masks are pytrees shaped like the
model's state, `nnx.state(model, nnx.Param)`, and the lth_jax functions take that state as they take a
linen params dict; `keep_pruned` wraps the optax optimizer that nnx.Optimizer drives.

    python examples/own_loop_nnx.py
"""

import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from lth_jax.metrics import calibration
from lth_jax.sparsity import masks, pruning
from lth_jax.sparsity.optax import keep_pruned, with_masks

TARGET_SPARSITY = 0.8
BATCH_SIZE = 64


class CNN(nnx.Module):
  """own_loop.py's CNN: two 3x3 convolutions, 2x2 average pooling, two dense layers."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
    self.dense = nnx.Linear(4 * 4 * 32, 64, rngs=rngs)
    self.output = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
    x = nnx.avg_pool(x, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
    return self.output(nnx.relu(self.dense(x)))


def digits(seed):
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)  # pixel values are 0..16
  return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


@nnx.jit
def train_step(model, optimizer, x, y):
  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
  optimizer.update(model, nnx.grad(loss_fn)(model))


@nnx.jit
def logits_of(model, x):
  return model(x)


def train(model, optimizer, x, y, epochs, rng):
  for _ in range(epochs):
    order = rng.permutation(len(x))
    for i in range(0, len(x) - BATCH_SIZE + 1, BATCH_SIZE):  # drop the ragged last batch: one shape, one compile
      batch = order[i:i + BATCH_SIZE]
      train_step(model, optimizer, x[batch], y[batch])


def evaluate(model, x, y):
  probs = calibration.softmax(np.asarray(logits_of(model, x)))
  return calibration.accuracy(probs, y), calibration.ece(probs, y, num_bins=15)


def rewind(model, optimizer, theta_0, m):
  """The surviving weights back to theta_0, the pruned ones 0, and a fresh optimizer state holding `m`."""
  nnx.update(model, masks.apply(theta_0, m))
  fresh = with_masks(optimizer.opt_state, m, params=theta_0, tx=optimizer.tx)
  nnx.update(optimizer.opt_state, nnx.state(fresh))   # in place, as nnx.Optimizer.update writes it
  optimizer.step[...] = 0


def main(epochs=10, rounds=3, seed=0):
  """One dict per pruning round 1..rounds (the dense round 0 is only printed)."""
  x_train, x_test, y_train, y_test = digits(seed)
  rng = np.random.default_rng(seed)
  model = CNN(nnx.Rngs(seed))
  # nnx.state's Variables are the model's own, which training updates: theta_0 is a copy of them.
  theta_0 = nnx.state(nnx.clone(model), nnx.Param)
  which = masks.prunable(theta_0)
  rate = pruning.rate_per_round(TARGET_SPARSITY, rounds)
  m = masks.init(theta_0)
  # One optimizer for all rounds: the masks live in its opt_state, so train_step compiles once.
  optimizer = nnx.Optimizer(model, keep_pruned(optax.sgd(0.05, momentum=0.9), m), wrt=nnx.Param)
  train(model, optimizer, x_train, y_train, epochs, rng)
  accuracy, ece = evaluate(model, x_test, y_test)
  print(f"round 0  sparsity 0.000  test accuracy {accuracy:.4f}  ECE {ece:.4f}  (dense)")

  results = []
  for r in range(1, rounds + 1):
    m = pruning.magnitude(nnx.state(model, nnx.Param), m, rate, scope="global", which=which)
    rewind(model, optimizer, theta_0, m)
    train(model, optimizer, x_train, y_train, epochs, rng)
    accuracy, ece = evaluate(model, x_test, y_test)
    sparsity = masks.sparsity(m, which)
    print(f"round {r}  sparsity {sparsity:.3f}  test accuracy {accuracy:.4f}  ECE {ece:.4f}")
    results.append({"round": r, "sparsity": sparsity, "test_accuracy": accuracy, "ece": ece,
                    "params": nnx.state(nnx.clone(model), nnx.Param), "masks": m})
  return results


if __name__ == "__main__":
  main()
