"""examples/own_optax_trainer.py: a user's own Flax model and optax optimizer through the Trainer and IMP."""

import importlib.util
import math
import os

import jax
import numpy as np
import pytest

from lth_jax import masks

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "own_optax_trainer.py")


def load_example():
  spec = importlib.util.spec_from_file_location("own_optax_trainer", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_example_prunes_exact_counts_keeps_exact_zeros_and_resumes_the_schedule():
  epochs, rounds = 3, 2
  results = load_example().main(epochs=epochs, rounds=rounds, seed=0)
  assert [r["round"] for r in results] == [1, 2]
  which = masks.prunable(results[0]["params"])
  total = sum(int(np.size(p)) for p, w in zip(jax.tree.leaves(results[0]["params"]), jax.tree.leaves(which)) if w)
  assert total == 64 * 64 + 64 * 10   # the two kernels of the 64-64-10 MLP
  # 1797 digits: 450 held out for test, 135 of the rest for validation, 1212 train -> 18 batches of 64
  spe = 1212 // 64
  rate, remaining = 1 - (1 - 0.8) ** (1 / rounds), total
  for r in results:
    remaining -= round(rate * remaining)
    assert masks.count(r["masks"], which) == (remaining, total)
    for p, m in zip(jax.tree.leaves(r["params"]), jax.tree.leaves(r["masks"])):
      assert np.all(np.asarray(p)[np.asarray(m) == 0] == 0.0)         # exactly zero through AdamW
    assert all(np.all(np.asarray(m) == 1) for m, w in zip(jax.tree.leaves(r["masks"]), jax.tree.leaves(which))
               if not w)                                                 # biases never pruned
    # rewound to epoch 1: epochs 2..3 trained, the warmup-cosine schedule read at the global step
    assert r["steps"] == epochs * spe and [h["epoch"] for h in r["history"]] == [2, 3]
    for h in r["history"]:   # the epoch's mean lr; warmup is one epoch, the cosine spans the rest of training
      steps = range((h["epoch"] - 1) * spe, h["epoch"] * spe)
      expected = np.mean([0.5 * 3e-3 * (1 + math.cos(math.pi * (s - spe) / (epochs * spe - spe))) for s in steps])
      assert h["lr"] == pytest.approx(expected, rel=1e-5)
  assert results[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
  assert results[-1]["test_accuracy"] > 0.3   # chance is 0.1; 3 epochs reach ~0.65 at 80% sparsity
