"""ResNet-50 on ImageNet: the large-scale lottery tickets of Frankle et al. 2020, "Linear Mode Connectivity and
the Lottery Ticket Hypothesis" (ICML 2020, arXiv:1912.05671): iterative magnitude pruning (IMP) whose
tickets are rewound to an early iteration of the dense run, not to initialisation.

Where each number was read (R = facebookresearch/open_lth, the authors' framework that paper's experiments
ran in; its README names the paper):
  model      R models/imagenet_resnet.py: torchvision's ResNet-50, `imagenet_resnet_50` (here imagenet_resnet50,
             25,557,032 parameters), kaiming_normal fan_out convs, BatchNorm weight 1 / bias 0 (torchvision's
             init; R's default_hparams draws the BN weights uniformly in [0, 1) instead, batchnorm_init='uniform')
  training   R models/imagenet_resnet.py default_hparams(): batch_size=1024, optimizer_name='sgd', momentum=0.9,
             lr=0.4, warmup_steps='5ep' (linear from 0), milestone_steps='30ep,60ep,80ep', gamma=0.1,
             weight_decay=1e-4, training_steps='90ep' ("These hyperparameters will reach 76.1% top-1")
  pruning    R default_hparams(): pruning_strategy='sparse_global' (magnitude, over every conv and the fc weight:
             prune.scope=global, nothing excluded), pruning_fraction=0.2 of the remaining weights per level
  depth      7 levels: 1 - 0.8^7 = 79% sparsity, the level nearest the "80% sparsity on Resnet-50" that
             "Stabilizing the Lottery Ticket Hypothesis" (arXiv:1903.01611v3, which this paper subsumes) states
             in its abstract
  rewinding  epoch 6: the same abstract rewinds to "0.1% to 7% through" training; 7% of 90 epochs is 6.3 epochs,
             the ResNet-50 end of that range. R sets it per run (--rewinding_steps), not in default_hparams; the
             paper's Table 1 itself could not be read where these numbers were checked: compare before relying on
             the exact point, and set prune.rewind_epoch or prune.rewind_step to the paper's
  data       R datasets/imagenet.py: train RandomResizedCrop(224, scale=(0.1, 1.0), ratio=(0.8, 1.25)) +
             RandomHorizontalFlip; test Resize(256) + CenterCrop(224) on ImageNet's val set; no held-out
             validation split (so none here: data.val_fraction=0, best_by never consulted)
Per-channel standardisation uses the mean and std of a seeded sample of the training images
(lth_jax.data.lazy.STATISTICS_EXAMPLES) rather than R's fixed (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225).

Data, decoded batch by batch on host threads (data.image_size, data.pipeline=stream), from either
  --config.data.dir=/path/to/imagenet   an image-folder tree: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val sorted
                                        into class folders, as torchvision's ImageFolder and PyTorch's example expect)
  --config.data.name=tfds --config.data.tfds_name=imagenet2012 --config.data.tfds_test_split=validation
  --config.data.tfds_dir=DIR            TFDS's imagenet2012, prepared once as array_record from the manually
                                        downloaded archives (lth_jax.data.tfds_source); its labels are read once

A scaled-down run (minutes on a CPU, tests/test_imagenet.py):
  python main.py --config=configs/imagenet_resnet50.py --config.data.dir=DIR --config.data.image_size=56 \\
      --config.model.width=4 --config.train.batch_size=8 --config.train.epochs=2 --config.iterative.rounds=1 \\
      --config.prune.rewind_epoch=1 --config.optimizer.warmup_epochs=1 --config.optimizer.milestones='(1,)'
"""

import ml_collections

from lth_jax.config import base


def get_config():
  c = base()
  c.method = "iterative"
  c.data.name = "image_folder"
  c.data.pipeline = "stream"
  c.data.image_size = 224
  c.data.resize_size = 256
  c.data.crop_scale = (0.1, 1.0)
  c.data.crop_ratio = (0.8, 1.25)
  c.data.val_fraction = 0.0
  c.model = ml_collections.ConfigDict({"name": "imagenet_resnet50", "width": 64})
  c.train.epochs = 90
  c.train.batch_size = 1024
  c.train.eval_batch_size = 1000      # ImageNet's val: 50 batches, none padded
  c.train.log_every = 1
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.4
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "step"
  c.optimizer.milestones = (30, 60, 80)
  c.optimizer.gamma = 0.1
  c.optimizer.warmup_epochs = 5.0
  c.prune.scope = "global"
  c.prune.rewind_epoch = 6
  c.iterative.rate = 0.2
  c.iterative.rounds = 7
  c.iterative.reset = "rewind"
  c.checkpoint.every = 1              # an ImageNet epoch is hours: lose at most one
  # Held-out figures on 1000 test images: each float32 set of 224x224 images is 600 MB of host memory.
  c.metrics.max_examples = 1000
  c.metrics.ood = ("gaussian_noise",)
  c.metrics.similarity_eps = ()
  return c
