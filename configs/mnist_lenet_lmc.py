"""LeNet-300-100 on MNIST, instability analysis: "Linear Mode Connectivity and the Lottery Ticket Hypothesis"
(Frankle, Dziugaite, Roy, Carbin 2020), its LeNet row.

configs/mnist_lenet.py's network, data split (5,000 training images held out), optimizer (Adam at 1.2e-3,
batch 60, constant) and pruning (layer-wise magnitude, 20% of each hidden layer and 10% of the output layer
per round); the LMC paper trains LeNet for 24,000 iterations (its Table 1), against the LTH paper's 50,000.
Instability: two copies of the network trained from the dense run's weights after k iterations, k in
{0, 100, 500, 2000}, under different data orders; the test error at 30 points of the line between their
final weights; the error barrier is its maximum minus the mean of the two ends. The same for IMP
subnetworks: for each k, iterative magnitude pruning with rewinding to k, analysed after rounds 2, 5, 10
and 15 (64.0, 32.8, 10.7 and 3.5% of the hidden weights left; 3.5% is the paper's LeNet sparsity, Table 1).
Each copy pair trains as one vmapped program. Evaluation once per epoch (the analysis reads the final
weights; the paper reports no early stopping here).
"""

import pathlib

from lth_jax.config import from_file


def get_config():
  c = from_file(pathlib.Path(__file__).with_name("mnist_lenet.py"))   # data, model, optimizer, per-round pruning
  c.method = "instability"
  c.train.steps = 24_000            # train.epochs follows: ceil(24000 / 916) = 27, the last one cut short
  c.train.eval_every_steps = 0      # validation and test once per epoch
  c.train.test_at_best_only = False
  c.stability.rewind_steps = (0, 100, 500, 2000)
  c.stability.points = 30
  c.stability.imp_rounds = (2, 5, 10, 15)
  c.iterative.rate = 0.2            # with prune.layer_scale: 20% of each hidden layer, 10% of the output layer
  c.train.vmap = True
  return c
