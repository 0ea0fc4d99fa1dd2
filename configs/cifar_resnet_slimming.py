"""ResNet-20 (bottleneck) on CIFAR-10, structured pruning: the ResNet-20 seed's Experiment 3.

General settings as configs/cifar_resnet.py: 160 epochs, batch 64, SGD with Nesterov momentum 0.9 and weight
decay 1e-4, lr 0.1 divided by 10 at epochs 80 and 120.
Experiment 3: train with network slimming's L1 penalty on the BatchNorm scales (lambda 1e-5, Liu et al.'s value
for ResNets); at epochs 10, 30, 50, 100 and 160 of that run (one branch each) remove 30% of the prunable
channels by one global |gamma| threshold -- only channels inside the bottleneck blocks (after conv1 and conv2),
since block outputs are tied together by the residual additions -- copy the kept channels into a narrower
ResNet-20, and retrain it for the full 160-epoch schedule from the kept weights of the pruning epoch
(--config.slimming.retrain_from=init: from a fresh initialisation instead). For the 50% ratio:
--config.slimming.ratio=0.5. Early-Bird tickets on the same network: --config.method=early_bird.

Data: CIFAR-10 through TFDS by default; for files on disk use e.g.
  --config.data.name=cifar10 --config.data.dir=/path/to/cifar-10-python.tar.gz
  --config.data.name=image_folder --config.data.dir=/path/to/cifar10-images.tar.gz
"""

import ml_collections

from lth_jax.config import base


def get_config():
  c = base()
  c.method = "slimming"
  # Data, model, optimizer and metrics as configs/cifar_resnet.py (Experiments 1 and 2).
  c.data.name = "tfds"
  c.data.tfds_name = "cifar10"
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
  c.prune.exclude = ("output/*",)  # conv weights only: `sparsity` counts the prunable conv weights removed
  c.slimming.penalty = 1e-5
  c.slimming.ratio = 0.3
  c.slimming.epochs = (10, 30, 50, 100, 160)
  c.slimming.criterion = "bn_scale"
  c.slimming.retrain_from = "pruned"
  c.slimming.retrain_epochs = 160
  c.early_bird.ratio = 0.3
  c.early_bird.window = 5
  c.early_bird.epsilon = 0.1
  c.metrics.ood = ("uniform_noise", "gaussian_noise")
  c.metrics.corruptions = ("gaussian_noise", "contrast", "gaussian_blur", "jpeg_compression")
  return c
