import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lth_jax import masks, models, pruning
from lth_jax.config import base
from lth_jax.data import augment
from lth_jax.training import state as state_lib
from lth_jax.training import step
from lth_jax.training import trainer as train
from tests.helpers import fit


def setup(opt_overrides, epochs=5, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(256, 8)), jnp.float32)
  y = jnp.asarray((np.asarray(x[:, 0]) > 0).astype(np.int32))
  data = {"train": (x, y), "val": (x[:64], y[:64]), "test": (x[64:128], y[64:128])}
  model = models.get("mlp", num_classes=2, widths=(32, 16))
  params = model.init(jax.random.key(seed), x[:1])["params"]
  opt = base().optimizer
  opt.update(opt_overrides)
  trainer = train.Trainer(model, opt, batch_size=32, steps_per_epoch=8, epochs=epochs)
  m = pruning.magnitude(params, masks.init(params), 0.7)
  return trainer, data, params, m


@pytest.mark.parametrize("opt", [
    dict(name="sgd", momentum=0.9, weight_decay=5e-4, lr=0.1),
    dict(name="sgd", momentum=0.9, nesterov=True, weight_decay=1e-4, lr=0.1),
    dict(name="adam", lr=1e-2, weight_decay=1e-3),
    dict(name="adamw", lr=1e-2, weight_decay=1e-2),
    dict(name="sgd", momentum=0.9, lr=0.1, schedule="cosine", warmup_epochs=1.0),
])
def test_pruned_weights_stay_exactly_zero(opt):
  trainer, data, params, m = setup(opt)
  state = trainer.init_state(params, {}, m, jax.random.key(1))
  state, history = fit(trainer, state, data, 5)
  assert len(history) == 5 and int(state.step) == 40
  for p, mk, p0 in zip(jax.tree.leaves(state.params), jax.tree.leaves(m), jax.tree.leaves(params)):
    assert np.all(np.asarray(p)[np.asarray(mk) == 0] == 0.0)           # exactly zero, not small
    alive = np.asarray(mk) == 1
    assert np.any(np.asarray(p)[alive] != np.asarray(p0)[alive])        # and the rest did train


def test_one_sgd_step_matches_the_definition():
  """(p - lr * grad(loss)(p) * m) * m with plain SGD, computed by hand."""
  trainer, data, params, m = setup(dict(name="sgd", momentum=0.0, lr=0.5))
  state = trainer.init_state(params, {}, m, jax.random.key(3))
  x, y = data["train"][0][:32], data["train"][1][:32]
  new_state, _ = step.train_step(trainer.recipe, state, (x, y))

  def loss(p):
    return step.cross_entropy(trainer.model.apply({"params": p}, x), y).mean()
  grads = jax.grad(loss)(masks.apply(params, m))
  expected = jax.tree.map(lambda p, g, mk: (p * mk - 0.5 * g * mk) * mk, params, grads, m)
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_an_optax_optimizer_gives_the_config_s_numbers():
  """optax.sgd with coupled weight decay is the config's sgd: the same weights, bit for bit."""
  opt = dict(name="sgd", momentum=0.9, weight_decay=5e-4, lr=0.1)
  trainer, data, params, m = setup(opt, epochs=2)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
  own = train.Trainer(trainer.model, tx, batch_size=32, steps_per_epoch=8, epochs=2)
  a, _ = fit(trainer, trainer.init_state(params, {}, m, jax.random.key(1)), data, 2)
  b, history = fit(own, own.init_state(params, {}, m, jax.random.key(1)), data, 2)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  assert history[0]["lr"] is None   # the optimizer's own learning rate is not known to the trainer


def test_an_optax_schedule_reads_the_global_step_after_a_rewind():
  """A fresh optimizer state at epoch 2 (step 16) steps with lr(16), not lr(0): p - lr(16) * g at the kept weights."""
  trainer, data, params, m = setup(dict(name="sgd"))
  schedule = lambda count: 0.1 * (count + 1)  # noqa: E731
  own = train.Trainer(trainer.model, optax.sgd(schedule), batch_size=32, steps_per_epoch=8, epochs=5)
  state = own.init_state(params, {}, m, jax.random.key(3), start_epoch=2)
  x, y = data["train"][0][:32], data["train"][1][:32]
  new_state, _ = step.train_step(own.recipe, state, (x, y))

  def loss(p):
    return step.cross_entropy(own.model.apply({"params": p}, x), y).mean()
  grads = jax.grad(loss)(masks.apply(params, m))
  expected = jax.tree.map(lambda p, g, mk: (p - 1.7 * g) * mk, params, grads, m)
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_step_schedule_and_warmup():
  opt = ml_collections.ConfigDict(base().optimizer.to_dict())
  opt.update(dict(lr=0.1, schedule="step", milestones=(2, 4), gamma=0.1))
  lr = state_lib.learning_rate(opt, steps_per_epoch=10, epochs=6)
  assert [float(lr(s)) for s in (0, 19, 20, 39, 40, 59)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
  opt.update(dict(schedule="cosine", warmup_epochs=1))
  lr = state_lib.learning_rate(opt, steps_per_epoch=10, epochs=6)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.05) and float(lr(10)) == pytest.approx(0.1)
  assert float(lr(60)) == pytest.approx(0.0, abs=1e-6)


def test_resuming_the_schedule_at_a_rewind_epoch():
  trainer, _, params, m = setup(dict(name="sgd", lr=0.1, schedule="cosine"), epochs=4)
  state = trainer.init_state(params, {}, m, jax.random.key(0), start_epoch=2)
  assert int(state.step) == 16
  assert float(trainer.lr(state.step)) == pytest.approx(float(optax.cosine_decay_schedule(0.1, 32)(16)))


def test_evaluate_pads_the_last_batch():
  trainer, data, params, m = setup(dict(name="sgd"))
  trainer.eval_batch_size = 100   # 256 examples: batches of 100, 100, 56 + padding
  state = trainer.init_state(params, {}, m, jax.random.key(0))
  logits = trainer.logits(state, data["train"][0])
  direct = trainer.model.apply({"params": state.params}, data["train"][0])
  np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-6)
  acc = trainer.evaluate(state, data["train"])["accuracy"]
  assert acc == pytest.approx(float(np.mean(np.argmax(direct, -1) == np.asarray(data["train"][1]))))


class ConvBN(nn.Module):
  """Convolutions, BatchNorm and a dense head: the pieces whose loops differ on XLA CPU."""
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.Conv(8, (3, 3), strides=2)(x)
    return nn.Dense(3)(x.mean((1, 2)))


def conv_setup(loop, compute_dtype="float32"):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(96, 8, 8, 2)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, 96), jnp.int32)
  model = ConvBN()
  variables = model.init(jax.random.key(0), x[:1])
  opt = base().optimizer
  opt.update(dict(lr=0.05, momentum=0.9, weight_decay=5e-4))
  trainer = train.Trainer(model, opt, batch_size=16, steps_per_epoch=6, epochs=3, loop=loop,
                          augment=augment.get("crop_flip"), compute_dtype=compute_dtype)
  m = pruning.magnitude(variables["params"], masks.init(variables["params"]), 0.6)
  state = trainer.init_state(variables["params"], variables["batch_stats"], m, jax.random.key(1))
  return trainer, {"train": (x, y), "val": (x[:32], y[:32]), "test": (x[32:64], y[32:64])}, state


@pytest.mark.parametrize("batched", [False, True])
def test_scan_and_step_loops_give_the_same_numbers(batched):
  """The epoch as one lax.scan and as jitted steps from Python: same shuffles, same steps, same result."""
  out = {}
  for loop in ("scan", "steps"):
    trainer, data, state = conv_setup(loop)
    if batched:
      other = trainer.init_state(state.params, state.batch_stats, masks.init(state.params), jax.random.key(7))
      states, histories = trainer.fit([state, other], data, 3, ["a", "b"])
    else:
      state, history = fit(trainer, state, data, 3)
      states, histories = [state], [history]
    out[loop] = states, histories
  (states_scan, hists_scan), (states_steps, hists_steps) = out["scan"], out["steps"]
  for s_scan, s_steps, h_scan, h_steps in zip(states_scan, states_steps, hists_scan, hists_steps):
    assert int(s_scan.step) == int(s_steps.step) == 18
    for key in ("train_loss", "train_accuracy", "val_accuracy", "test_loss"):
      assert [r[key] for r in h_scan] == pytest.approx([r[key] for r in h_steps], abs=1e-5)
    for a, b in zip(jax.tree.leaves((s_scan.params, s_scan.batch_stats, s_scan.opt_state)),
                    jax.tree.leaves((s_steps.params, s_steps.batch_stats, s_steps.opt_state))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.array_equal(jax.random.key_data(s_scan.rng), jax.random.key_data(s_steps.rng))


@pytest.mark.parametrize("loop", ["scan", "steps"])
def test_fit_leaves_the_callers_state_intact(loop):
  """Epochs donate their buffers, but never the state a method passed in (it may rewind to it)."""
  trainer, data, state = conv_setup(loop)
  before = [np.array(a) for a in jax.tree.leaves(state.params)]
  fit(trainer, state, data, 2)
  fit(trainer, state, data, 1)   # the same state again: still alive
  for a, b in zip(before, jax.tree.leaves(state.params)):
    assert np.array_equal(a, np.asarray(b))


def test_bfloat16_compute_keeps_float32_state_and_exact_zeros():
  trainer, data, state = conv_setup("steps", compute_dtype="bfloat16")
  f32_trainer, _, f32_state = conv_setup("steps")
  # Same weights, eval logits in bf16 agree with float32 to bf16's ~3 significant digits.
  np.testing.assert_allclose(trainer.logits(state, data["val"][0]), f32_trainer.logits(f32_state, data["val"][0]),
                             rtol=0.05, atol=0.02)
  assert trainer.logits(state, data["val"][0]).dtype == jnp.float32
  state, history = fit(trainer, state, data, 3)
  floats = [a for a in jax.tree.leaves((state.params, state.masks, state.batch_stats, state.opt_state))
            if jnp.issubdtype(a.dtype, jnp.floating)]   # the schedule's step count is an int32
  assert {a.dtype for a in floats} == {jnp.dtype(jnp.float32)}
  for p, mk in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.masks)):
    assert np.all(np.asarray(p)[np.asarray(mk) == 0] == 0.0)
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  # Training really ran in bf16: the float32 run differs by more than float32 rounding would.
  f32_state, _ = fit(f32_trainer, f32_state, data, 3)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(state.params),
                                                              jax.tree.leaves(f32_state.params)))
  assert diff > 1e-4


def test_unknown_loop_or_dtype_is_a_user_error():
  from lth_jax.errors import UserError
  with pytest.raises(UserError, match="train.loop"):
    conv_setup("while")
  with pytest.raises(UserError, match="compute_dtype"):
    conv_setup("scan", compute_dtype="float16")


def test_a_checkpoint_of_the_older_optimizer_layout_resumes_the_same_run(tmp_path):
  """Checkpoints written before the optimizer became one optax transformation hold only the direction's
  state (`optimizer(config)`, the learning rate applied by hand): they restore into today's state, and the
  next steps equal those of the state they were written from."""
  from lth_jax.training import checkpoint
  trainer, data, params, m = setup(dict(name="adam", lr=1e-2), epochs=3)
  state, _ = fit(trainer, trainer.init_state(params, {}, m, jax.random.key(1)), data, 1)
  direction = state_lib.optimizer(trainer.optimizer)
  assert jax.tree.structure(state.opt_state[0]) == jax.tree.structure(direction.init(params))
  checkpoints = checkpoint.SegmentStore(str(tmp_path), every=1, keep=2)
  older = state.replace(opt_state=state.opt_state[0])          # what the older Trainer saved
  checkpoints.save("run", 1, older, [{"epoch": 0}], final=True)
  template = trainer.init_state(params, {}, m, jax.random.key(1))
  restored, history, _ = checkpoints.restore("run", template, end_epoch=1)
  checkpoints.close()
  assert history == [{"epoch": 0}]
  assert jax.tree.structure(restored.opt_state) == jax.tree.structure(template.opt_state)
  assert int(restored.opt_state[1].count) == int(state.step) == 8
  a, _ = fit(trainer, state, data, 2)
  b, _ = fit(trainer, restored, data, 2)
  assert int(a.step) == 16
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)


def test_a_resumed_fit_counts_the_read_back_epochs_at_the_seconds_they_took(tmp_path):
  """Each checkpoint keeps its member's training seconds so far (a vmapped group's epoch time split between
  its members); a trainer that reads the segment back credits their sum to the store, which is what
  `Experiment.now` adds to the clock. A checkpoint written before the seconds were kept reads back as 0."""
  import dataclasses
  import time
  import orbax.checkpoint as ocp
  from lth_jax.training import checkpoint
  trainer, data, params, m = setup(dict(name="adam", lr=1e-2), epochs=3)
  states = [trainer.init_state(params, {}, m, jax.random.key(k)) for k in (1, 2)]
  store = checkpoint.SegmentStore(str(tmp_path / "checkpoints"), every=1, keep=1)
  first = dataclasses.replace(trainer, store=store)
  began = time.time()
  first.fit(states, data, 3, ["a", "b"])
  elapsed = time.time() - began
  store.close()
  saved = []
  for name in ("a_0-3", "b_0-3"):   # each member's last checkpoint, read with Orbax alone
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints" / name))
    saved.append(manager.restore(3, args=ocp.args.Composite(history=ocp.args.JsonRestore()))["history"])
    manager.close()
  assert [len(doc["rows"]) for doc in saved] == [3, 3]
  assert saved[0]["seconds"] == saved[1]["seconds"] > 0     # one vmapped program: equal shares
  assert saved[0]["seconds"] + saved[1]["seconds"] <= elapsed   # its epochs, inside the fit
  again = checkpoint.SegmentStore(str(tmp_path / "checkpoints"), every=1, keep=1)   # as after a kill
  assert again.credited_s == 0
  dataclasses.replace(trainer, store=again).fit(states, data, 3, ["a", "b"])
  assert again.credited_s == saved[0]["seconds"] + saved[1]["seconds"]
  # the older layout: the history rows alone
  manager = again._manager("old")
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(states[0].replace(
      rng=jax.random.key_data(states[0].rng))), history=ocp.args.JsonSave([{"epoch": 1}])), force=True)
  manager.wait_until_finished()
  _, history, seconds = again.restore("old", states[0], 1)
  again.close()
  assert (history, seconds) == ([{"epoch": 1}], 0.0)
