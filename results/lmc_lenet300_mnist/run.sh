#!/usr/bin/env bash
# One seed of the linear-mode-connectivity study (issue 25, study 2; Frankle, Dziugaite, Roy, Carbin 2020) on
# LeNet-300-100 / MNIST: configs/mnist_lenet_lmc.py (configs/mnist_lenet.py's network, data split, Adam 1.2e-3,
# batch 60 and layer-wise pruning; 24,000 iterations as the LMC paper's Table 1). For each rewind iteration k,
# one piece: the dense run (weights kept after k iterations), the instability of the dense network from k (two
# copies, different data orders, test error at 30 points between them), and IMP with rewinding to k
# (20% of each hidden layer, 10% of the output layer per round, 15 rounds) with the instability of its
# subnetworks after rounds 2, 5, 10 and 15 (64.0 / 32.8 / 10.7 / 3.5% of the hidden weights left).
#   bash results/lmc_lenet300_mnist/run.sh SEED [PIECE [EXTRA_FLAG...]]     (PIECE: k0 | k100 | k500 | k2000 | all)
# Workdir: $STUDY_DIR/seedSEED/kK (STUDY_DIR defaults to this folder); MNIST from $MNIST_DIR (default
# ../shared/data/mnist). Each piece trains its own dense run (the same run in every piece of a seed: same
# seed, same theta_0 and data order; the aggregate counts it once). Rerunning the same command resumes a
# piece that was cut off; a finished piece is read back from its checkpoints. EXTRA_FLAGs go last and override
# the script's values (smoke runs; a tuple-valued key the script already sets is appended to, not
# replaced, when given again).
# Aggregate (rows in k order):
#   python -m lth_jax.report aggregate results/lmc_lenet300_mnist/seed*/k{0,100,500,2000} \
#     --out results/lmc_lenet300_mnist
set -euo pipefail
seed=$1
piece=${2:-all}
shift $(( $# < 2 ? $# : 2 ))
cd "$(dirname "$0")/../.."
data=${MNIST_DIR:-../shared/data/mnist}
out=${STUDY_DIR:-results/lmc_lenet300_mnist}
case $piece in
  all) ks=(0 100 500 2000) ;;
  k0|k100|k500|k2000) ks=("${piece#k}") ;;
  *) echo "unknown piece $piece (k0 | k100 | k500 | k2000 | all)" >&2; exit 2 ;;
esac
for k in "${ks[@]}"; do
  python main.py --config=configs/mnist_lenet_lmc.py --config.data.dir="$data" --config.seed="$seed" \
    "--config.stability.rewind_steps=($k,)" --config.log.progress=False --config.log.tensorboard=False \
    --config.workdir="$out/seed$seed/k$k" "$@"
done
