#!/usr/bin/env bash
# One seed of the sparse-training study (issue 25, study 4) on LeNet-300-100 / MNIST at the Lottery Ticket
# protocol of configs/mnist_lenet.py (Adam 1.2e-3, batch 60, 50,000 iterations, 5,000 validation images,
# evaluation every 100 iterations, early stopping at minimum validation loss): the dense network, and static,
# SET, RigL and gradual magnitude pruning (Zhu & Gupta) at 90 / 95 / 98% sparsity, each training exactly the
# dense run's 50,000 iterations from theta_0, under one per-layer distribution per piece:
#   erk      Erdos-Renyi-Kernel (RigL's ERK: density of a layer proportional to sum(shape) / prod(shape))
#   uniform  RigL's uniform: the first layer dense and unmasked, every other layer the same sparsity
#            (prune.distribution=uniform_first_dense)
# SET / RigL: an update every 100 iterations, drop fraction 0.3 cosine-decayed to 0, no update after 75% of
# training (RigL's defaults). Gradual: s_t = s_f (1 - (t - t0) / (n dt))^3 from 10% to 60% of training, a
# pruning step every 100 iterations (the library's start / end; not a published LeNet schedule).
# Runs train one after the other (train.vmap=False): vmapped, SET and RigL would compute their mask update at
# every step (lax.cond becomes a select), and on this CPU a vmapped group of three costs three runs anyway.
#   bash results/sparse_training_lenet300_mnist/run.sh SEED [PIECE [EXTRA_FLAG...]]   (PIECE: erk | uniform | all)
# Workdir: $STUDY_DIR/seedSEED/PIECE (STUDY_DIR defaults to this folder); MNIST from $MNIST_DIR (default
# ../shared/data/mnist). Rerunning the same command resumes a piece that was cut off; a finished piece is
# read back from its checkpoints (nothing retrains). EXTRA_FLAGs go last and override
# the script's values (smoke runs; a tuple-valued key the script already sets is appended to, not
# replaced, when given again).
# Aggregate:  python -m lth_jax.report aggregate results/sparse_training_lenet300_mnist/seed*/* \
#               --out results/sparse_training_lenet300_mnist
set -euo pipefail
seed=$1
piece=${2:-all}
shift $(( $# < 2 ? $# : 2 ))
cd "$(dirname "$0")/../.."
data=${MNIST_DIR:-../shared/data/mnist}
out=${STUDY_DIR:-results/sparse_training_lenet300_mnist}
declare -A distribution=([erk]=erk [uniform]=uniform_first_dense)
case $piece in
  all) pieces=(erk uniform) ;;
  erk|uniform) pieces=("$piece") ;;
  *) echo "unknown piece $piece (erk | uniform | all)" >&2; exit 2 ;;
esac
for p in "${pieces[@]}"; do
  python main.py --config=configs/mnist_lenet.py --config.data.dir="$data" --config.seed="$seed" \
    --config.method=compare "--config.compare.methods=('static','set','rigl','gradual')" \
    "--config.compare.sparsities=(0.9,0.95,0.98)" --config.prune.distribution="${distribution[$p]}" \
    "--config.prune.layer_scale=()" \
    --config.sparse.every=100 --config.sparse.drop_fraction=0.3 --config.sparse.end=0.75 \
    --config.gradual.start=0.1 --config.gradual.end=0.6 --config.gradual.every=100 --config.gradual.initial_sparsity=0 \
    --config.train.vmap=False --config.log.progress=False --config.log.tensorboard=False \
    --config.workdir="$out/seed$seed/$p" "$@"
done
