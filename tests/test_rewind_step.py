"""prune.rewind_step: tickets rewind to the dense run's weights after exactly k iterations."""

import jax
import numpy as np
import pytest

from lth_jax import experiment
from lth_jax.errors import UserError
from lth_jax.methods import common
from lth_jax.sparsity import masks as masks_lib
from lth_jax.training import step
from tests.helpers import Collect, drive, leaves_equal, oneshot, small_config


def by_hand(exp, k):
  """The dense run's first k iterations, one jitted train_step at a time over the epochs' shuffles."""
  trainer = exp.trainer(exp.config.train.epochs)
  recipe, (x, y) = trainer.recipe, exp.data["train"]
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks_lib.init(exp.init_params), exp.key("dense"))
  train_step = jax.jit(lambda s, xb, yb: step.train_step(recipe, s, (xb, yb)))
  done = 0
  while done < k:
    state, order = step.shuffle(recipe, state, x)
    for i in range(min(trainer.steps_per_epoch, k - done)):
      state, _ = train_step(state, x[order[i]], y[order[i]])
      done += 1
  return state


def test_rewind_step_restores_the_dense_weights_after_k_steps_and_resumes_the_schedule_there():
  exp = experiment.build(small_config(**{"prune.rewind_step": 13, "train.loop": "steps"}))
  spe = exp.trainer(exp.config.train.epochs).steps_per_epoch
  assert 13 % spe and 13 > spe   # inside the second epoch
  out = Collect()
  dense = drive(common.dense(exp, out))
  assert dense.rewind_step == 13
  expected = by_hand(exp, 13)
  for a, b in zip(jax.tree.leaves(dense.rewind_params), jax.tree.leaves(expected.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  assert not leaves_equal(dense.rewind_params, by_hand(exp, 12).params)
  # taking the snapshot leaves the dense run as it is without one
  plain = experiment.build(small_config(**{"train.loop": "steps"}))
  assert leaves_equal(drive(common.dense(plain, Collect())).state.params, dense.state.params)
  # the ticket starts from those weights at step 13 and ends where the dense run ends
  ticket = oneshot(exp, dense, 0.8, out, reset="rewind")
  assert leaves_equal(out.rewinds[-1], dense.rewind_params)
  assert int(ticket.step) == exp.config.train.epochs * spe
  assert out.records[-1]["epochs_trained"] == exp.config.train.epochs - 13 // spe


def test_rewind_step_at_an_epoch_boundary_equals_rewind_epoch():
  spe = experiment.build(small_config()).trainer(4).steps_per_epoch
  by_step = drive(common.dense(experiment.build(small_config(**{"prune.rewind_step": 2 * spe})), Collect()))
  by_epoch = drive(common.dense(experiment.build(small_config(**{"prune.rewind_epoch": 2})), Collect()))
  assert by_step.rewind_step == by_epoch.rewind_step == 2 * spe
  assert leaves_equal(by_step.rewind_params, by_epoch.rewind_params)


def test_rewind_step_beyond_training_or_beside_rewind_epoch_is_refused():
  with pytest.raises(UserError, match="are both set"):
    experiment.validate(small_config(**{"prune.rewind_step": 5, "prune.rewind_epoch": 1}))
  with pytest.raises(UserError, match="config.prune.rewind_step=10000 must be below"):   # before anything trains
    experiment.build(small_config(**{"prune.rewind_step": 10_000}))


class Interrupted(Exception):
  pass


def test_a_ticket_rewound_inside_an_epoch_resumes_bit_identically(tmp_path, monkeypatch):
  from lth_jax.training import checkpoint

  def ticket_params(directory, crash_at=None):
    exp = experiment.build(small_config(**{"prune.rewind_step": 13}))
    exp.store = checkpoint.SegmentStore(str(directory), every=1, keep=5)
    exp.trainers.clear()
    out = Collect()
    dense = drive(common.dense(exp, out))
    return oneshot(exp, dense, 0.8, out, reset="rewind").params

  expected = ticket_params(tmp_path / "whole")
  save = checkpoint.SegmentStore.save

  def crashing(self, name, epoch, state, history, final, seconds=0.0):
    save(self, name, epoch, state, history, final, seconds)
    if name.startswith("oneshot_reinit") and epoch == 3:   # the ticket's first epoch was the partial one
      raise Interrupted
  monkeypatch.setattr(checkpoint.SegmentStore, "save", crashing)
  with pytest.raises(Interrupted):
    ticket_params(tmp_path / "killed")
  monkeypatch.setattr(checkpoint.SegmentStore, "save", save)
  assert leaves_equal(ticket_params(tmp_path / "killed"), expected)
