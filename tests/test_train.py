import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lth_jax import masks, models, pruning, train
from lth_jax.config import base


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
  state, history = trainer.fit(state, data, 5)
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
  new_state, _ = trainer._train_step(state, (x, y))

  def loss(p):
    return train.cross_entropy(trainer.model.apply({"params": p}, x), y).mean()
  grads = jax.grad(loss)(masks.apply(params, m))
  expected = jax.tree.map(lambda p, g, mk: (p * mk - 0.5 * g * mk) * mk, params, grads, m)
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_step_schedule_and_warmup():
  opt = ml_collections.ConfigDict(base().optimizer.to_dict())
  opt.update(dict(lr=0.1, schedule="step", milestones=(2, 4), gamma=0.1))
  lr = train.learning_rate(opt, steps_per_epoch=10, epochs=6)
  assert [float(lr(s)) for s in (0, 19, 20, 39, 40, 59)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
  opt.update(dict(schedule="cosine", warmup_epochs=1))
  lr = train.learning_rate(opt, steps_per_epoch=10, epochs=6)
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
