"""Conv-2/4/6 on CIFAR-10: the Lottery Ticket paper's protocol (Frankle & Carbin 2019, Figure 2).

Adam, batch 60, no augmentation; Conv-6 (default): lr 3e-4, 30K iterations (40 epochs of 45K images);
layer-wise pruning per round of 15% of conv weights, 20% of hidden FC weights and 10% of the output
layer, rewinding to theta_0. For Conv-2: --config.model.name=conv2 --config.optimizer.lr=2e-4
--config.train.epochs=27 --config.prune.layer_scale="('conv_*=0.5','output/*=0.5')"; Conv-4: conv4,
lr 3e-4, 33 epochs, conv scale 0.5 (10%).
"""

import ml_collections

from lth_jax.config import base


def get_config():
  c = base()
  c.method = "iterative"
  c.data.name = "cifar10"        # fetched and verified on first use, or --config.data.dir=local files
  c.data.val_fraction = 0.1
  c.model = ml_collections.ConfigDict({"name": "conv6"})
  c.train.epochs = 40
  c.train.batch_size = 60
  c.optimizer.name = "adam"
  c.optimizer.lr = 3e-4
  c.prune.scope = "layerwise"
  c.iterative.rate = 0.2                                  # hidden FC layers
  c.prune.layer_scale = ("conv_*=0.75", "output/*=0.5")   # conv 15%, output 10% per round
  c.iterative.rounds = 15
  c.iterative.reset = "init"
  c.iterative.random_control_every = 3
  return c
