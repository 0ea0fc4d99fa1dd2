"""ResNet-18 (CIFAR variant) on CIFAR-10: the CNN-pruning seed.

200 epochs of SGD at lr 0.1, momentum 0.9, weight decay 5e-4 (cosine annealing, as the kuangliu
pytorch-cifar script the seed trains with); conv and FC weights pruned globally by magnitude.
One-shot at 50/75/90% with 20 epochs of retraining; iterative: 11% of the remaining weights per
round, 5 epochs of training per round, until 90%, then 100 epochs (`iterative.final_epochs`).
"""

import ml_collections

from lth_jax.config import base


def get_config():
  c = base()
  c.method = "compare"
  c.data.name = "cifar10"        # fetched and verified on first use, or --config.data.dir=local files
  c.data.val_fraction = 0.1
  c.data.augment = "crop_flip"
  c.model = ml_collections.ConfigDict({"name": "resnet18", "width": 64})
  c.train.epochs = 200
  c.train.batch_size = 128
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "cosine"
  c.finetune.epochs = 20
  c.finetune.lr = 0.01
  c.finetune.schedule = "cosine"
  c.prune.scope = "global"
  c.prune.sparsity = 0.9
  c.iterative.rate = 0.11
  c.iterative.rounds = 20          # 1 - 0.89^20 = 90.3%
  c.iterative.reset = "none"
  c.iterative.round_epochs = 5
  c.iterative.final_epochs = 100
  c.compare.methods = ("oneshot", "iterative")
  c.compare.sparsities = (0.5, 0.75, 0.9)
  return c
