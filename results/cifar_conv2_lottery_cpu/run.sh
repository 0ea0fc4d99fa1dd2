#!/bin/bash
# The LotteryTicketPruning seed's four techniques on Conv-2 / CIFAR-10, scaled down for a 2-core CPU.
# Usage: bash results/cifar_conv2_lottery_cpu/run.sh  (from the repository root; needs ../shared/data/cifar10)
set -e
R=results/cifar_conv2_lottery_cpu
rm -rf $R/run && mkdir -p $R/run
python main.py --config=configs/cifar_conv.py --config.method=compare \
  "--config.compare.methods=('oneshot','oneshot_reinit','oneshot_random','iterative')" "--config.compare.sparsities=(0.5,0.9)" \
  --config.model.name=conv2 --config.optimizer.lr=2e-4 "--config.prune.layer_scale=('conv_*=0.5','output/*=0.5')" \
  --config.iterative.rate=0.0 --config.iterative.rounds=2 --config.iterative.random_control_every=0 \
  --config.data.name=image_folder --config.data.dir=../shared/data/cifar10/cifar10-images.tar.gz \
  --config.data.subset=1000 --config.data.val_fraction=0.02 --config.data.test_subset=500 \
  --config.train.epochs=3 --config.finetune.epochs=1 --config.train.vmap=False \
  "--config.metrics.corruptions=('gaussian_noise','gaussian_blur')" "--config.metrics.severities=(1,5)" --config.metrics.max_examples=500 \
  "--config.metrics.ood=('uniform_noise','mnist:../shared/data/mnist')" "--config.metrics.similarity_eps=()" \
  --config.train.log_every=1 --config.workdir=$R/run
