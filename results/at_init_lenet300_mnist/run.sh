#!/usr/bin/env bash
# One seed of the pruning-at-initialization study (issue 25, study 3): an MNIST analogue of "Pruning Neural
# Networks at Initialization: Why are We Missing the Mark?" (Frankle, Dziugaite, Roy, Carbin 2021), whose study
# is on CIFAR-10 / ImageNet. LeNet-300-100 at the Lottery Ticket protocol of configs/mnist_lenet.py (Adam
# 1.2e-3, batch 60, 50,000 iterations, 5,000 validation images, evaluation every 100 iterations, early stopping
# at minimum validation loss), every method pruning all three kernels by one global ranking
# (prune.scope=global, no per-layer scale), at 79.0 / 94.5 / 98.6% sparsity = 1 - 0.8^7, 1 - 0.8^13, 1 - 0.8^19,
# the sparsities of IMP's rounds 7, 13 and 19 at 20% per round:
#   imp          IMP: train, prune 20% of the remaining weights (global magnitude), reset the survivors to
#                theta_0 (rewinding to iteration 0: LeNet-300-100 is stable there, Frankle et al. 2020),
#                retrain; 19 rounds; at rounds 7, 13 and 19 the three checks of that round's mask train beside
#                the ticket (iterative.controls): reinit (fresh weights), shuffle (within layers), invert (of the
#                previous round's survivors the lowest-magnitude ones kept, the same count); the lineage stays
#                the ticket's
#   snip grasp synflow magnitude
#                prune theta_0 by the criterion to each sparsity and train 50,000 iterations from theta_0;
#                each with the controls none, shuffle (within layers), reinit (fresh weights), invert
#                (lowest scores kept): 12 runs, one workdir each
#   random       a uniformly random mask (global: per-layer counts of a random draw) at each sparsity; its
#                shuffle / reinit / invert are the same distribution as itself, so it runs without them
#   bash results/at_init_lenet300_mnist/run.sh SEED [PIECE [EXTRA_FLAG...]]
#     PIECE: imp | snip | grasp | synflow | magnitude | random | at_init (the five criteria) | all (default)
# Workdirs: $STUDY_DIR/seedSEED/imp and $STUDY_DIR/seedSEED/<criterion>_<control>_<sparsity> (STUDY_DIR
# defaults to this folder); MNIST from $MNIST_DIR (default ../shared/data/mnist). Rerunning the same command
# resumes a run that was cut off; a finished run is read back from its checkpoints. EXTRA_FLAGs go last and override
# the script's values (smoke runs; a tuple-valued key the script already sets is appended to, not
# replaced, when given again).
# Aggregate (rows grouped by method):
#   python -m lth_jax.report aggregate results/at_init_lenet300_mnist/seed*/{imp,snip_*,grasp_*,synflow_*,magnitude_*,random_*} \
#     --out results/at_init_lenet300_mnist
set -euo pipefail
seed=$1
piece=${2:-all}
shift $(( $# < 2 ? $# : 2 ))
cd "$(dirname "$0")/../.."
data=${MNIST_DIR:-../shared/data/mnist}
out=${STUDY_DIR:-results/at_init_lenet300_mnist}/seed$seed
sparsities=(0.7902848 0.9450244186112 0.9855884811924144)   # 1 - 0.8^7, 1 - 0.8^13, 1 - 0.8^19
names=(79.0 94.5 98.6)
common=(--config=configs/mnist_lenet.py --config.data.dir="$data" --config.seed="$seed" --config.prune.scope=global
        "--config.prune.layer_scale=()" --config.log.progress=False --config.log.tensorboard=False)

imp() {
  python main.py "${common[@]}" --config.method=iterative --config.iterative.rate=0.2 --config.iterative.rounds=19 \
    --config.iterative.reset=init --config.iterative.random_control_every=0 \
    "--config.iterative.controls=('reinit','shuffle','invert')" \
    "--config.iterative.control_rounds=(7,13,19)" --config.train.vmap=True --config.workdir="$out/imp" "$@"
}

at_init() {   # criterion
  local criterion=$1; shift
  local controls=(none shuffle reinit invert)
  [ "$criterion" = random ] && controls=(none)
  for control in "${controls[@]}"; do
    for i in 0 1 2; do
      python main.py "${common[@]}" --config.method=prune_at_init --config.prune.criterion="$criterion" \
        --config.prune.control="$control" --config.prune.sparsity="${sparsities[$i]}" \
        --config.workdir="$out/${criterion}_${control}_${names[$i]}" "$@"
    done
  done
}

case $piece in
  imp) imp "$@" ;;
  snip|grasp|synflow|magnitude|random) at_init "$piece" "$@" ;;
  at_init) for c in snip grasp synflow magnitude random; do at_init $c "$@"; done ;;
  all) imp "$@"; for c in snip grasp synflow magnitude random; do at_init $c "$@"; done ;;
  *) echo "unknown piece $piece (imp | snip | grasp | synflow | magnitude | random | at_init | all)" >&2; exit 2 ;;
esac
