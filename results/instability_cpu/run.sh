#!/bin/bash
# Instability analysis (linear mode connectivity), scaled down for a shared 2-core CPU.
# Usage: bash results/instability_cpu/run.sh [lenet|resnet]  (from the repository root; both when no argument;
# workdirs under results/instability_cpu)
set -e
R=results/instability_cpu
COMMON="--config.method=instability --config.train.log_every=0 --config.metrics.ood=()
  --config.metrics.similarity_eps=() --config.metrics.max_examples=200 --config.data.test_subset=2000
  --config.data.val_fraction=0.02 --config.prune.scope=global --config.prune.layer_scale=() --config.prune.sparsity=0.8"
WHICH=${1:-all}
# LeNet-300-100, 3000 MNIST training images, 4 epochs of 50 iterations (batch 60); ticket: 80% of the weights removed
[ $WHICH = resnet ] || nice -n 10 python main.py --config=configs/mnist_lenet.py --config.train.vmap=True --config.data.dir=../shared/data/mnist $COMMON \
  --config.data.subset=3000 --config.train.epochs=4 --config.train.eval_every=4 \
  '--config.stability.rewind_steps=(0,20,100)' --config.stability.points=9 --config.workdir=$R/lenet
# ResNet-20 at width 4 (BatchNorm), copies trained one after the other: vmapped convolutions become grouped
# convolutions, which XLA:CPU runs ~7x slower (the first pair: 825 s vmapped, 115 s one after the other)
# ResNet-20 at width 4 (BatchNorm), 1000 CIFAR-10 training images, 10 epochs of 20 iterations, SGD 0.1 momentum 0.9
[ $WHICH = lenet ] || nice -n 10 python main.py --config=configs/cifar_resnet.py --config.train.vmap=False --config.data.name=image_folder \
  --config.data.dir=../shared/data/cifar10/cifar10-images.tar.gz $COMMON --config.model.name=resnet20 \
  --config.model.width=4 '--config.metrics.corruptions=()' --config.data.subset=1000 --config.train.batch_size=50 --config.train.epochs=10 \
  --config.train.eval_every=10 '--config.optimizer.milestones=()' --config.optimizer.schedule=constant \
  --config.optimizer.lr=0.1 '--config.stability.rewind_steps=(0,20,100)' --config.stability.points=7 \
  --config.stability.bn_examples=500 --config.workdir=$R/resnet20_w4
