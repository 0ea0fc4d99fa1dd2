"""Fashion-MNIST with an MLP: the Dynamic Pruning seed's trials (unpruned, pruned, lottery ticket, dynamic).

Pruned: 30% of the trained weights removed, evaluated without retraining; lottery ticket: the same
mask rewound to theta_0 and retrained; dynamic: 17% removed at 1/3 and 2/3 of one training run.
Data: fetched into ~/.cache/lth_jax on first use and verified; for the IDX files on disk use
  --config.data.dir=/path/to/fashion-mnist
"""

from lth_jax.config import base


def get_config():
  c = base()
  c.method = "compare"
  c.data.name = "fashion_mnist"
  c.data.val_fraction = 1 / 12
  c.model.name = "mlp"
  c.model.widths = (512, 256)
  c.train.epochs = 20
  c.train.batch_size = 128
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-3
  c.finetune.epochs = 0
  c.compare.methods = ("oneshot", "oneshot_reinit", "dynamic")
  c.compare.sparsities = (0.3111,)   # 1 - 0.83^2: the same final sparsity for all three
  c.dynamic.at = (1 / 3, 2 / 3)
  c.dynamic.fraction = 0.17
  return c
