"""ResNet-20 (bottleneck) on CIFAR-10: the ResNet-20 seed's Experiments 1 and 2.

General settings: 160 epochs, batch 64, SGD with Nesterov momentum 0.9 and weight decay 1e-4, lr 0.1
divided by 10 at epochs 80 and 120; only conv weights are pruned (the output layer is excluded).
Experiment 1: one-shot at 50/70/90% then 160 epochs of retraining from the trained weights (`oneshot`).
Experiment 2: the same masks with the weights rewound to their initialisation (`oneshot_reinit`), and
4 iterative rounds of 1-(1-pr)^(1/4) each with rewinding (`iterative`); each round records its mask's
accuracy at the dense weights (@w0) and at the previous round's weights (@w(t-1)).

Data: CIFAR-10 is fetched into ~/.cache/lth_jax on first use and verified; or files on disk with
  --config.data.dir=/path/to/cifar-10-python.tar.gz  (or cifar-10-batches-py/, or an image-folder tree / .tar.gz)
"""

import ml_collections

from lth_jax.config import base


def get_config():
  c = base()
  c.method = "compare"
  c.data.name = "cifar10"
  c.data.val_fraction = 0.1
  c.data.augment = "crop_flip"
  c.model = ml_collections.ConfigDict({"name": "resnet20", "width": 16, "bottleneck": True})
  c.train.epochs = 160
  c.train.batch_size = 64
  c.train.eval_batch_size = 1000
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "step"
  c.optimizer.milestones = (80, 120)
  c.optimizer.gamma = 0.1
  c.finetune.epochs = 160          # Experiment 1 retrains for the full schedule
  c.finetune.schedule = "step"
  c.prune.scope = "global"
  c.prune.exclude = ("output/*",)  # conv weights only
  c.prune.sparsity = 0.9
  c.prune.from_best = True         # "pruning is done in one step based on the weights achieved in the best model state"
  c.iterative.rounds = 4
  c.iterative.reset = "init"
  c.compare.methods = ("oneshot", "oneshot_reinit", "iterative")
  c.compare.sparsities = (0.5, 0.7, 0.9)
  c.metrics.ood = ("uniform_noise", "gaussian_noise")
  c.metrics.corruptions = ("gaussian_noise", "contrast", "gaussian_blur", "jpeg_compression")
  return c
