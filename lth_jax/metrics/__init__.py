"""Pure functions of logits, labels and params: what pruning did beyond accuracy.

calibration (ECE, MCE, UCE, NLL, Brier, reliability, temperature scaling), ood (MSP / entropy
scores, AUROC, AUPR, FPR@95), corruptions (CIFAR-10-C style), compression (parameters, FLOPs),
potential (prune potential, excess error), similarity (to the dense network's predictions),
connectivity (error along the linear path between two networks, its barrier).
"""

from lth_jax.metrics import calibration, compression, connectivity, corruptions, ood, potential, similarity  # noqa: F401,E501
