#!/usr/bin/env bash
# The LotteryTicketPruning seed's make_moons study (configs/moons_mlp.py: one-shot, re-initialised one-shot,
# random re-initialisation, re-initialised iterative; accuracy, early-stopping epoch, ECE, UCE) over seeds.
#   bash results/moons_seeds/run.sh [FIRST_SEED [LAST_SEED]]     (default 0 9), then the aggregate
# Each seed is its own workdir (data split, theta_0, data order, pruning keys all from config.seed); a seed
# already finished is skipped by the resume (rerunning it changes nothing).
set -euo pipefail
cd "$(dirname "$0")/../.."
for seed in $(seq "${1:-0}" "${2:-9}"); do
  python main.py --config=configs/moons_mlp.py --config.seed="$seed" --config.log.progress=False \
    --config.log.tensorboard=False --config.workdir=results/moons_seeds/seed"$seed"
done
python -m lth_jax.report aggregate results/moons_seeds/seed* --out results/moons_seeds
