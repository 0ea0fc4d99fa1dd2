"""Palmer penguins, the Dynamic Pruning seed's trials: unpruned, pruned (30%), lottery ticket, dynamic.

The seed's network is Linear(12, 12) + ReLU, Linear(12, 3) + tanh, Adam at lr 1e-4 for 4000 epochs with
4 batches per epoch; dynamic pruning removes 17% at 1/3 and 2/3 of training (just over 30% in all).
The seed splits 200 / 100 / 33 in file order; we split with the seed at the same proportions.
"""

from lth_jax.config import base


def get_config():
  c = base()
  c.method = "compare"
  c.data.name = "penguins"
  c.data.val_fraction = 100 / 333
  c.data.test_fraction = 33 / 333
  c.data.standardize = False    # the seed's features are already scaled into [0, 1]
  c.model.name = "mlp"
  c.model.widths = (12,)
  c.model.activation = "relu"
  c.model.output_activation = "tanh"
  c.train.epochs = 4000
  c.train.batch_size = 50       # 200 training rows: 4 batches per epoch
  c.train.log_every = 500
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-4
  c.prune.sparsity = 0.3
  c.finetune.epochs = 0         # the seed's "pruned model" is evaluated without retraining
  c.compare.methods = ("oneshot", "oneshot_reinit", "dynamic")
  c.compare.sparsities = (0.3111,)   # 1 - 0.83^2: the same final sparsity for all three
  c.dynamic.at = (1 / 3, 2 / 3)
  c.dynamic.fraction = 0.17
  return c
