"""Your own Flax model and your own optax optimizer through lth_jax's Trainer: iterative magnitude pruning
with rewinding on scikit-learn's 8x8 digits, no config file and no network.

The optimizer is any optax transformation, learning rate included: here gradient clipping then AdamW on
a warmup-cosine schedule. The Trainer wraps it in `keep_pruned` with each state's masks (pruned weights
stay exactly 0 through Adam's moments and the weight decay) and reads its schedule at the global step,
so a round rewound to epoch `REWIND_EPOCH` resumes the schedule there with fresh moments (Frankle et al.
2020's rewinding). Each round removes 1 - (1 - 0.8)^(1/rounds) of the remaining kernel weights by one
global magnitude ranking (`pruning.magnitude`, the LTH paper's IMP).

    python examples/own_optax_trainer.py
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from lth_jax import Trainer, masks, pruning

TARGET_SPARSITY = 0.8
BATCH_SIZE = 64
REWIND_EPOCH = 1


class MLP(nn.Module):
  """The user's own model: any flax.linen Module whose __call__ takes `train`."""
  hidden: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Dense(self.hidden, name="hidden")(x.reshape(x.shape[0], -1)))
    return nn.Dense(10, name="output")(x)


def digits(seed: int) -> dict:
  """The Trainer's data: {split: (x, y)} on the device; pixel values 0..16 scaled to [0, 1]."""
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
  x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.1, random_state=seed,
                                                    stratify=y_train)
  return {split: (jnp.asarray(a), jnp.asarray(b, jnp.int32))
          for split, a, b in (("train", x_train, y_train), ("val", x_val, y_val), ("test", x_test, y_test))}


def main(epochs: int = 8, rounds: int = 3, seed: int = 0) -> list[dict]:
  """One dict per pruning round 1..rounds (the dense round 0 is only printed)."""
  data = digits(seed)
  steps_per_epoch = data["train"][0].shape[0] // BATCH_SIZE
  schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, warmup_steps=steps_per_epoch,
                                                decay_steps=epochs * steps_per_epoch)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))
  model = MLP()
  # lr=: the history records the learning rate (the optimizer holds its own schedule either way)
  trainer = Trainer(model, tx, BATCH_SIZE, steps_per_epoch, epochs, lr=schedule)
  theta_0 = jax.jit(model.init)(jax.random.key(seed), data["train"][0][:1])["params"]
  which = masks.prunable(theta_0)   # the kernels; biases stay dense

  # Dense training, keeping the weights at the rewind epoch.
  dense = trainer.init_state(theta_0, {}, masks.init(theta_0), jax.random.key(seed + 1))
  [rewind], _ = trainer.fit([dense], data, REWIND_EPOCH, ["dense"])
  [trained], _ = trainer.fit([rewind], data, epochs, ["dense"])
  print(f"round 0  sparsity 0.000  test accuracy {trainer.evaluate(trained, data['test'])['accuracy']:.4f}  (dense)")

  rate = pruning.rate_per_round(TARGET_SPARSITY, rounds)
  m, results = masks.init(theta_0), []
  for r in range(1, rounds + 1):
    m = pruning.magnitude(trained.params, m, rate, scope="global", which=which)
    # Rewind: the survivors go back to their weights at REWIND_EPOCH, the optimizer starts afresh there.
    start = trainer.init_state(rewind.params, {}, m, jax.random.key(seed + 1 + r), start_epoch=REWIND_EPOCH)
    [trained], [history] = trainer.fit([start], data, epochs, [f"round {r}"])
    accuracy = trainer.evaluate(trained, data["test"])["accuracy"]
    sparsity = masks.sparsity(m, which)
    print(f"round {r}  sparsity {sparsity:.3f}  test accuracy {accuracy:.4f}")
    results.append({"round": r, "sparsity": sparsity, "test_accuracy": accuracy, "params": trained.params,
                    "masks": m, "history": history, "steps": int(trained.step)})
  return results


if __name__ == "__main__":
  main()
