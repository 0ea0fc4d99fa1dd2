"""Cross-checks against the reference implementations' conventions (issue 17), each by hand."""

import jax
import numpy as np
import pytest

from lth_jax import evaluation, experiment
from lth_jax.metrics import calibration, ood
from tests.helpers import small_config


class FixedLogits:
  """A trainer stand-in whose logits for any n inputs are the first n rows of `table` (cycled)."""

  def __init__(self, table):
    self.table = np.asarray(table, np.float32)

  def logits(self, state, x):
    return self.table[np.arange(len(x)) % len(self.table)]


def saturating_table(n: int) -> np.ndarray:
  # top logit leads by 10..45: float32's softmax is exactly 1.0 past ~16.6, float64's past ~36.7
  lead = np.linspace(10.0, 45.0, n)
  return np.stack([lead, np.zeros(n), np.full(n, -1.0)], -1)


def test_identical_saturating_logits_on_both_sides_give_auroc_one_half():
  exp = experiment.build(small_config(**{"metrics.ood": ("uniform_noise",), "metrics.max_examples": 0}))
  table = saturating_table(len(exp.raw_test[1]))
  saturated32 = np.asarray(jax.nn.softmax(table, -1)).max(-1) == 1.0
  assert saturated32.sum() > np.sum(table[:, 0] > 37)        # float32 saturates on more rows than float64
  out = exp.evaluator.figures(FixedLogits(table), state=None)["ood"]["uniform_noise"]
  assert out["msp_auroc"] == 0.5 and out["entropy_auroc"] == 0.5
  # and the OOD side's probabilities are float64's, not a float32 softmax saturated to 1.0
  probs = evaluation._probs(table)
  assert probs.dtype == np.float64 and np.sum(probs.max(-1) == 1.0) == np.sum(table[:, 0] > 37)
  assert np.array_equal(ood.max_softmax(probs), ood.max_softmax(calibration.softmax(table)))


def test_stratified_subset_of_a_class_sorted_split_has_every_class_in_proportion():
  labels = np.repeat(np.arange(10), [100] * 9 + [300])     # sorted by class, the last class 3x larger
  keep = evaluation.stratified(labels, 120, seed=3)
  counts = np.bincount(labels[keep], minlength=10)
  assert len(keep) == 120 and len(set(keep)) == 120 and np.all(np.diff(keep) > 0)
  assert counts.tolist() == [10] * 9 + [30]
  assert np.array_equal(keep, evaluation.stratified(labels, 120, seed=3))
  assert not np.array_equal(keep, evaluation.stratified(labels, 120, seed=4))
  assert np.array_equal(evaluation.stratified(labels, 5000, seed=3), np.arange(len(labels)))


def test_evaluator_draws_its_held_out_subset_stratified_and_records_it():
  cfg = small_config(**{"metrics.ood": (), "metrics.max_examples": 20})
  exp = experiment.build(cfg)
  x, y = exp.raw_test
  order = np.argsort(y, kind="stable")
  exp.raw_test = (x[order], y[order])                      # a class-sorted test split
  evaluator = evaluation.Evaluator(exp)
  assert set(evaluator.labels.tolist()) == set(np.unique(y).tolist())
  assert np.array_equal(evaluator.labels, exp.raw_test[1][evaluator.indices])
  exp.data = {**exp.data, "test": (exp.normalize(exp.raw_test[0]), exp.raw_test[1])}
  figures = evaluator.figures(FixedLogits(np.eye(2)), state=None)
  assert figures["heldout_subset"] == {"examples": 20, "of": len(y), "selection": "stratified random",
                                       "seed": cfg.seed}


def conv_reference(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
  """PyTorch's conv2d with padding=k//2 on every side, by loops: x (H, W, Cin), kernel (k, k, Cin, Cout)."""
  k = kernel.shape[0]
  xp = np.pad(x, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  rows = (xp.shape[0] - k) // stride + 1
  cols = (xp.shape[1] - k) // stride + 1
  out = np.zeros((rows, cols, kernel.shape[-1]))
  for i in range(rows):
    for j in range(cols):
      window = xp[i * stride:i * stride + k, j * stride:j * stride + k, :]
      out[i, j] = np.tensordot(window, kernel, axes=3)
  return out


def test_resnet_stride_two_block_pads_symmetrically_as_the_torch_resnets():
  import functools
  import flax.linen as nn
  from lth_jax.models import resnet
  norm = functools.partial(nn.BatchNorm, use_running_average=True, momentum=0.9, epsilon=1e-5)
  block = resnet.BasicBlock(3, resnet.conv, norm, strides=2)
  x = np.asarray(jax.random.normal(jax.random.key(0), (1, 6, 6, 2)))
  variables = block.init(jax.random.key(1), x)
  p = jax.tree.map(np.asarray, variables["params"])
  bn = 1 / np.sqrt(1 + 1e-5)       # fresh BatchNorm in eval mode: mean 0, var 1, scale 1, bias 0
  relu = lambda v: np.maximum(v, 0)
  y = relu(bn * conv_reference(x[0], p["conv1"]["kernel"], 2))
  y = bn * conv_reference(y, p["conv2"]["kernel"], 1)
  expected = relu(y + bn * conv_reference(x[0], p["shortcut_conv"]["kernel"], 2))
  got = np.asarray(block.apply(variables, x))[0]
  assert got.shape == (3, 3, 3)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_gaussian_blur_repeats_the_edge_at_the_border_as_cifar10c():
  from lth_jax.metrics import corruptions
  x = np.zeros((1, 5, 5, 1))
  x[0, 0, :, 0] = 1.0                     # a bright top row: the border pixel below it sees the edge
  sigma = 0.6
  k = corruptions.gaussian_kernel(sigma)  # radius int(4 * 0.6 + 0.5) = 2: taps at -2..2
  assert len(k) == 5
  # columns are constant, so the horizontal pass leaves them; vertically, pixel (0, c) sees rows
  # -2, -1 (both the edge row 0 repeated), 0, 1, 2 -> k[0] + k[1] + k[2]; reflect (row -2 = row 1) gives k[1] + k[2]
  got = corruptions.gaussian_blur(x, sigma)
  assert got[0, 0, 2, 0] == pytest.approx(k[0] + k[1] + k[2], abs=1e-12)
  assert got[0, 1, 2, 0] == pytest.approx(k[1] + k[0], abs=1e-12)     # row 1 sees rows -1 (edge) and 0


def test_early_bird_default_window_is_the_papers_queue_of_five_masks():
  from lth_jax import config as config_lib
  from lth_jax.sparsity import early_bird
  far, near = {"bn": np.array([True, True, False, False])}, {"bn": np.array([False, False, True, True])}
  # masks alternate up to epoch 3 and stay put from epoch 4: the queue (the new mask and 4 earlier) first
  # holds only equal masks at epoch 8 (a window of 5 earlier masks would wait for epoch 9)
  masks = [far, near, far, near] + [far] * 6
  assert early_bird.first_ticket(masks)[0] == 8
  assert early_bird.EarlyBird().window == 4 == config_lib.base().early_bird.window


def test_prune_from_best_prunes_the_weights_of_the_best_validation_epoch():
  from lth_jax.methods import common, lottery
  from lth_jax.sparsity import masks as masks_lib
  from tests.helpers import Collect, drive, fit, leaves_equal
  cfg = small_config(**{"train.epochs": 8, "prune.from_best": True, "metrics.ood": (),
                        "metrics.similarity_eps": ()})
  exp = experiment.build(cfg)
  out = Collect()
  dense = drive(common.dense(exp, out))
  # the protocol: the first epoch of the highest validation accuracy (every epoch is evaluated here)
  val = [row["val_accuracy"] for row in out.records[0]["curve"]]
  best = val.index(max(val)) + 1
  assert dense.prune_epoch == out.records[0]["best_epoch"] == best
  trainer = exp.trainer(8)
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks_lib.init(exp.init_params), exp.key("dense"))
  at_best, _ = fit(trainer, state, exp.data, best)
  assert leaves_equal(dense.prune_state.params, at_best.params)
  assert leaves_equal(dense.state.params, out.states[0].params)
  if best < cfg.train.epochs:   # then the weights pruned are not the last ones
    assert not leaves_equal(dense.state.params, at_best.params)
  ticket = lottery.oneshot_ticket(exp, dense, 0.5, "rewind")
  expected = common.prune(exp, at_best.params, masks_lib.init(at_best.params), 0.5, "oneshot_reinit@0.5")
  assert leaves_equal(ticket.state.masks, expected)
  drive(lottery.oneshot_sweep(exp, dense, [0.5], out, "rewind"))
  assert out.records[-1]["pruned_from_epoch"] == best
