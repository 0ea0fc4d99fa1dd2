"""ResNet-20 (bottleneck) on CIFAR-10, structured pruning: the ResNet-20 seed's Experiment 3.

General settings as configs/cifar_resnet.py: 160 epochs, batch 64, SGD with Nesterov momentum 0.9 and weight
decay 1e-4, lr 0.1 divided by 10 at epochs 80 and 120.
Experiment 3: train with network slimming's L1 penalty on the BatchNorm scales (lambda 1e-5, Liu et al.'s value
for ResNets); at epochs 10, 30, 50, 100 and 160 of that run (one branch each) remove 30% of the prunable
channels by one global |gamma| threshold -- only channels inside the bottleneck blocks (after conv1 and conv2),
since block outputs are tied together by the residual additions -- copy the kept channels into a narrower
ResNet-20, and retrain it for the full 160-epoch schedule from the kept weights of the pruning epoch
(--config.slimming.retrain_from=init: from a fresh initialisation instead; =continue: the seed's alternative,
the schedule resumed at the pruning epoch, so a branch trains 160 epochs in all). For the 50% ratio:
--config.slimming.ratio=0.5. Early-Bird tickets on the same network: --config.method=early_bird.

Data: CIFAR-10 is fetched into ~/.cache/lth_jax on first use and verified; or files on disk with
  --config.data.dir=/path/to/cifar-10-python.tar.gz  (or cifar-10-batches-py/, or an image-folder tree / .tar.gz)
"""

import pathlib

from lth_jax.config import from_file


def get_config():
  c = from_file(pathlib.Path(__file__).with_name("cifar_resnet.py"))   # data, model, optimizer and metrics shared
  c.method = "slimming"
  c.slimming.penalty = 1e-5
  c.slimming.ratio = 0.3
  c.slimming.epochs = (10, 30, 50, 100, 160)
  c.slimming.criterion = "bn_scale"
  c.slimming.retrain_from = "pruned"
  c.slimming.retrain_epochs = 160
  c.prune.from_best = True         # Experiment 3: the best weights within the first 10/30/50/100/160 epochs
  c.early_bird.ratio = 0.3
  c.early_bird.window = 4           # the paper: a queue of 5 masks, the new one and 4 earlier
  c.early_bird.epsilon = 0.1
  return c
