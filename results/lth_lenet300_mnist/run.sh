#!/usr/bin/env bash
# One seed of the Lottery Ticket LeNet-300-100 study (Frankle & Carbin 2019, Figures 1, 3, 4) at the paper's
# protocol: configs/mnist_lenet.py (Adam 1.2e-3, batch 60, 50,000 iterations, 5,000 validation images,
# evaluation every 100 iterations, early stopping at minimum validation loss, layer-wise 20% / 10% output,
# reset to theta_0), 15 rounds (3.5% of the hidden weights left), the random re-initialisation control every
# other round, trained beside its ticket as one vmapped program.
#   bash results/lth_lenet300_mnist/run.sh SEED [MNIST_DIR]
# Rerunning the same command resumes a run that was cut off (checkpoints every 5 epochs of each round).
set -euo pipefail
seed=$1
data=${2:-../shared/data/mnist}
cd "$(dirname "$0")/../.."
python main.py --config=configs/mnist_lenet.py --config.data.dir="$data" --config.seed="$seed" \
  --config.iterative.rounds=15 --config.iterative.random_control_every=2 --config.train.vmap=True \
  --config.log.progress=False --config.log.tensorboard=False \
  --config.workdir=results/lth_lenet300_mnist/seed"$seed"
