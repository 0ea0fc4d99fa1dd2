"""Pure functions of logits, labels and params: what pruning did beyond accuracy.

calibration (ECE, MCE, UCE, NLL, Brier, reliability, temperature scaling), ood (MSP / entropy
scores, AUROC, AUPR, FPR@95), corruptions (CIFAR-10-C style), compression (parameters, FLOPs),
potential (prune potential, excess error), similarity (to the dense network's predictions).
"""

from lth_jax.metrics import calibration, compression, corruptions, ood, potential, similarity  # noqa: F401
