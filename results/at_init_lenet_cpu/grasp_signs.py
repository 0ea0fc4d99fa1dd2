"""Why GraSP at initialization trains badly here and its shuffled mask does not: the masks' structure.

  python results/at_init_lenet_cpu/grasp_signs.py     (from the repository root)

Rebuilds run.py's theta_0 and the masks at 10% left for grasp and snip (the same config, so the same
masks), and prints per layer: weights kept, units left without inputs, the share of kept weights that
are positive, and how many units keep weights of almost one sign (>80% or <20% positive).
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

from lth_jax import experiment  # noqa: E402
from lth_jax.methods import at_init  # noqa: E402
from lth_jax.sparsity import masks as masks_lib  # noqa: E402

for criterion in ("grasp", "snip"):
  exp = experiment.build(run.config(criterion=criterion))
  masks = dict(masks_lib.named_leaves(at_init.ticket(exp, 0.9).state.masks))
  for name, w in masks_lib.named_leaves(exp.init_params):
    kept, w = np.asarray(masks[name]).astype(bool), np.asarray(w)
    if w.ndim != 2:
      continue
    shares = [float((w[:, j][kept[:, j]] > 0).mean()) for j in range(w.shape[1]) if kept[:, j].any()]
    one_sign = sum(s < 0.2 or s > 0.8 for s in shares)
    print(f"{criterion} {name}: kept {int(kept.sum())}, units without inputs {int((kept.sum(0) == 0).sum())}, "
          f"positive share of kept {float((w[kept] > 0).mean()):.3f}, units of almost one sign {one_sign} of {len(shares)}")
