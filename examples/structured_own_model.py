"""Structured pruning of your own Flax model: half its channels removed, the network physically narrower.

A small residual CNN with BatchNorm, defined here and known to lth_jax by nothing but its apply function,
trained on scikit-learn's 8x8 digits (no network needed). `graph.channel_groups` reads from the traced
program which parameter slices share a channel (a conv's filters, its BatchNorm, the next layer's input
weights; the residual addition ties the stem and the block's last conv; the flatten ties each channel to
its block of Dense rows); each group drops the half of its channels with the lowest L1 norm;
`graph.shrink` returns the narrower program and its parameters, which are fine-tuned a little. Printed:
parameters, accuracy and forward latency before and after.

    python examples/structured_own_model.py [--steps 300] [--retrain-steps 200]
"""

import argparse
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from lth_jax.metrics import compression
from lth_jax.sparsity import graph, group_criteria

FRACTION = 0.5
BATCH_SIZE = 64


class ResidualCNN(nn.Module):
  """Stem, a residual block, a stride-2 conv, a flatten into two Dense layers; BatchNorm after every conv."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), use_bias=False)
    h = nn.relu(bn(name="bn0")(conv(32, name="stem")(x)))
    y = nn.relu(bn(name="bn1")(conv(32, name="conv1")(h)))
    h = nn.relu(h + bn(name="bn2")(conv(32, name="conv2")(y)))
    h = nn.relu(bn(name="bn3")(conv(64, strides=2, name="conv3")(h)))   # 8x8 -> 4x4
    h = nn.relu(nn.Dense(64, name="hidden")(h.reshape((h.shape[0], -1))))
    return nn.Dense(10, name="head")(h)


def digits(seed: int):
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)  # pixel values are 0..16
  return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)



def make_step(loss_of, tx):
  """Jitted SGD step on variables['params']; loss_of(params, variables, x, y) -> (loss, new variables)."""
  @jax.jit
  def step(variables, opt_state, x, y):
    (_, variables), grads = jax.value_and_grad(loss_of, has_aux=True)(variables["params"], variables, x, y)
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    return {**variables, "params": optax.apply_updates(variables["params"], updates)}, opt_state
  return step


def train(step, tx, variables, x, y, steps: int, rng):
  opt_state = tx.init(variables["params"])
  for _ in range(steps):
    batch = rng.choice(len(x), BATCH_SIZE, replace=False)
    variables, opt_state = step(variables, opt_state, x[batch], y[batch])
  return variables


def accuracy(forward, variables, x, y) -> float:
  return float(np.mean(np.argmax(forward(variables, x), -1) == y))


def main(steps: int = 300, retrain_steps: int = 200, seed: int = 0) -> dict:
  x_train, x_test, y_train, y_test = digits(seed)
  rng = np.random.default_rng(seed)
  model = ResidualCNN()
  variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 8, 8, 1)))
  tx = optax.sgd(0.05, momentum=0.9)

  # -- train the full-width network (BatchNorm on batch statistics) -----------------------------------
  def train_loss(params, variables, x, y):
    logits, updated = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), {**variables, **updated}
  variables = train(make_step(train_loss, tx), tx, variables, x_train, y_train, steps, rng)

  # -- channel groups of the eval-mode program, half of each group's channels dropped by L1 ------------
  full_fn = lambda v, x: model.apply(v, x, train=False)
  groups = graph.channel_groups(full_fn, variables, x_test)
  keep = group_criteria.channel_keep(variables, groups, FRACTION, "l1", scope="layerwise")
  narrow_fn, narrow_vars = graph.shrink(full_fn, variables, groups, keep)
  full_jit, narrow_jit = jax.jit(full_fn), jax.jit(narrow_fn)
  for g, k in zip(groups, keep):
    print(f"group of {g.size:3d} channels, {int(k.sum()):3d} kept: {', '.join(sorted(g.leaves()))}")
  gap = float(jnp.abs(narrow_jit(narrow_vars, x_test) - full_jit(graph.mask(variables, groups, keep), x_test)).max())
  print(f"narrow program vs full program on zeroed channels: max |difference| {gap:.2e}")

  # -- fine-tune the narrow network ---------------------------------------------------------------------
  # narrow_fn is the eval-mode program: BatchNorm keeps its (narrowed) running statistics while its scale
  # and bias train with the rest, as when fine-tuning with frozen BatchNorm statistics.
  def narrow_loss(params, variables, x, y):
    logits = narrow_fn({**variables, "params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), variables
  retrained = train(make_step(narrow_loss, tx), tx, narrow_vars, x_train, y_train, retrain_steps, rng)

  out = {"params_full": compression.count_params(variables), "params_narrow": compression.count_params(narrow_vars),
         "accuracy_full": accuracy(full_jit, variables, x_test, y_test),
         "accuracy_pruned": accuracy(narrow_jit, narrow_vars, x_test, y_test),
         "accuracy_retrained": accuracy(narrow_jit, retrained, x_test, y_test),
         "latency_full_ms": 1e3 * compression.time_inference(full_jit, variables, x_test),
         "latency_narrow_ms": 1e3 * compression.time_inference(narrow_jit, retrained, x_test)}
  print(f"parameters: {out['params_full']:,} full -> {out['params_narrow']:,} narrow")
  print(f"test accuracy: {out['accuracy_full']:.4f} full, {out['accuracy_pruned']:.4f} right after pruning, "
        f"{out['accuracy_retrained']:.4f} after {retrain_steps} fine-tuning steps")
  print(f"forward latency on {len(x_test)} images (median of 20): {out['latency_full_ms']:.2f} ms full -> "
        f"{out['latency_narrow_ms']:.2f} ms narrow")
  return out


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300, help="training steps of the full-width network")
  parser.add_argument("--retrain-steps", type=int, default=200, help="fine-tuning steps of the narrow network")
  args = parser.parse_args()
  main(args.steps, args.retrain_steps)
