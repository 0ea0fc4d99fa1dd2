"""make_moons with a small fully connected classifier (the LotteryTicketPruning seed's FCC study).

The four techniques of that study: one-shot, re-initialised one-shot (the lottery ticket), randomly
re-initialised one-shot, and re-initialised iterative pruning; accuracy, best epoch, ECE and UCE.
"""

from lth_jax.config import base


def get_config():
  c = base()
  c.method = "compare"
  c.data.name = "moons"
  c.data.n_samples = 2000
  c.data.noise = 0.2
  c.model.name = "mlp"
  c.model.widths = (64, 64)
  c.train.epochs = 40
  c.train.batch_size = 32
  c.optimizer.name = "adam"
  c.optimizer.lr = 3e-3
  c.finetune.epochs = 10
  c.compare.methods = ("oneshot", "oneshot_reinit", "oneshot_random", "iterative")
  c.compare.sparsities = (0.5, 0.8, 0.9, 0.95)
  c.iterative.rounds = 5
  c.iterative.reset = "init"
  # OOD: points far from the training data (the seed's FCC study) and uniform noise over the data's box.
  c.metrics.ood = ("far_points", "uniform_noise")
  c.metrics.similarity_eps = (0.0, 0.1, 0.3)
  return c
