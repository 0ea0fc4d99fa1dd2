"""LeNet-300-100 on MNIST, the Lottery Ticket paper's protocol (Frankle & Carbin 2019, Figure 3).

Adam at 1.2e-3, batch 60, exactly 50,000 iterations (54 epochs of the 55K training images and 536 steps
of a 55th), 5K of the training images held out for validation, validation and test loss / accuracy every
100 iterations (test only where validation loss reached a new minimum: all the early-stopping
figure needs, at a third of the cost), early stopping at the minimum validation loss (train.best_by=val_loss; best_step and the
test accuracy there in every record); iterative magnitude pruning layer-wise, 20% per round of each hidden
layer and 10% of the output layer, rewinding to theta_0 after every round; every third round, the
control trains the same mask from a random initialisation. MNIST is fetched into ~/.cache/lth_jax on first use
and verified; or point config.data.dir at a directory holding the four IDX files.
"""

import ml_collections

from lth_jax.config import base


def get_config():
  c = base()
  c.data.name = "mnist"
  c.data.val_fraction = 5000 / 60000
  c.model = ml_collections.ConfigDict({"name": "lenet300_100", "activation": "relu"})
  c.train.steps = 50_000          # train.epochs follows: ceil(50000 / 916) = 55
  c.train.eval_every_steps = 100
  c.train.best_by = "val_loss"
  c.train.test_at_best_only = True   # the test split only where validation loss reaches a new minimum
  c.train.batch_size = 60
  c.train.log_every = 5
  c.optimizer.name = "adam"
  c.optimizer.lr = 1.2e-3
  c.prune.scope = "layerwise"
  c.prune.layer_scale = ("output/*=0.5",)
  c.iterative.rate = 0.2
  c.iterative.rounds = 20          # 0.8^20: 1.2% of the hidden weights remain
  c.iterative.reset = "init"
  c.iterative.random_control_every = 3   # the same masks from a random initialisation
  c.method = "iterative"
  return c
