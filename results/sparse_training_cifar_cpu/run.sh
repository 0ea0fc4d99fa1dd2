#!/bin/bash
# Prune-during-training and sparse training on a small BatchNorm convnet (ResNet-20, basic blocks, width 4)
# on a CIFAR-10 subset, scaled down for a 2-core CPU.
# Usage: bash results/sparse_training_cifar_cpu/run.sh  (from the repository root; needs ../shared/data/cifar10)
set -e
R=results/sparse_training_cifar_cpu
COMMON="--config=configs/cifar_resnet.py --config.method=compare --config.model.width=4 --config.model.bottleneck=False
  --config.compare.sparsities=(0.8,0.9,0.98) --config.data.name=image_folder
  --config.data.dir=../shared/data/cifar10/cifar10-images.tar.gz --config.data.subset=1500 --config.data.val_fraction=0.02
  --config.data.test_subset=1000 --config.train.epochs=6 --config.train.batch_size=50 --config.train.vmap=False
  --config.optimizer.schedule=constant --config.optimizer.milestones=() --config.prune.from_best=False
  --config.iterative.rate=0 --config.iterative.rounds=3 --config.iterative.reset=rewind --config.prune.rewind_epoch=1
  --config.iterative.random_control_every=0 --config.sparse.every=10 --config.gradual.every=10
  --config.metrics.ood=('uniform_noise',) --config.metrics.corruptions=() --config.metrics.similarity_eps=()
  --config.train.log_every=1"
rm -rf $R/erk $R/uniform
# every method with ERK; SET and RigL also with every layer at the same sparsity
/usr/bin/time -f "wall %e s" python main.py $COMMON "--config.compare.methods=('iterative','gradual','static','set','rigl')" \
  --config.prune.distribution=erk --config.workdir=$R/erk
/usr/bin/time -f "wall %e s" python main.py $COMMON "--config.compare.methods=('set','rigl')" \
  --config.prune.distribution=uniform --config.workdir=$R/uniform
