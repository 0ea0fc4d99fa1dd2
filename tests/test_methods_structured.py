"""Network slimming and Early-Bird end to end on a tiny VGG-11: records, rebuilt widths, detection, counts.

The data are sklearn's digits upsampled to 32x32 (VGG-11 halves the side five times), 512 training examples;
VGG-11 at 8 channels per conv learns them within 3 epochs. One experiment serves every test: compiling
dominates the time, so the Early-Bird runs prune at epochs the slimming run also prunes at, where the rebuilt
network, and so its compiled trainer, is the same.
"""

import functools
import json
import math

import jax
import ml_collections
import numpy as np
import pytest
import sklearn.datasets

from lth_jax import cli, experiment, masks, models, report
from lth_jax.config import base
from lth_jax.errors import UserError
from lth_jax.methods import structured as methods_structured
from lth_jax.metrics import compression
from lth_jax.sparsity import early_bird, structured
from lth_jax.training import checkpoint
from tests.helpers import Collect, drive, fit, override, run_method

INPUT_SHAPE = (32, 32, 1)
MODEL = "vgg11"


def digits32(path) -> str:
  """digits at 32x32 as an .npz; val and test of one size, so their compiled evaluations are shared."""
  digits = sklearn.datasets.load_digits()
  x, y = np.kron(digits.images / 16.0, np.ones((4, 4)))[..., None].astype(np.float32), digits.target
  np.savez(path, x_train=x[:1257], y_train=y[:1257], x_val=x[1257:1527], y_val=y[1257:1527],
           x_test=x[1527:], y_test=y[1527:])
  return str(path)


def tiny_config(data_dir="", **overrides):
  c = base()
  c.method = "slimming"
  c.data.name = "npz"
  c.data.dir = data_dir
  c.data.subset = 512
  c.model = ml_collections.ConfigDict({"name": MODEL, "widths": (8,) * 8})
  c.train.epochs = 3
  c.train.batch_size = 16
  c.train.log_every = 0
  c.optimizer.lr = 0.1
  c.metrics.ood = ()
  c.metrics.similarity_eps = ()
  c.slimming.penalty = 1e-2   # large: sum |gamma| halves within 3 short epochs (5e-2 would zero it)
  c.slimming.epochs = (2, 3)
  c.slimming.retrain_epochs = 1
  return override(c, **overrides)


@pytest.fixture(scope="module")
def digits_path(tmp_path_factory) -> str:
  return digits32(tmp_path_factory.mktemp("data") / "digits32.npz")


@pytest.fixture(scope="module")
def slim(digits_path):
  exp = experiment.build(tiny_config(digits_path))
  out = Collect()
  run_method(exp, out)
  return exp, out


@pytest.fixture(scope="module")
def trajectory(slim):
  """The full-width training replayed epoch by epoch with the same compiled trainer: state after each epoch."""
  exp, _ = slim
  trainer = methods_structured.penalised_trainer(exp, exp.config.train.epochs, exp.config.slimming.penalty)
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks.init(exp.init_params), exp.key("dense"))
  states = []
  for epoch in range(1, exp.config.train.epochs + 1):
    state, _ = fit(trainer, state, exp.data, epoch)
    states.append(state)
  return states


def kernel_width(params, bn):
  layer = params
  for key in structured.conv_of(bn).split("/"):
    layer = layer[key]
  return layer["kernel"].shape[-1]


def test_slimming_records_and_rebuilt_widths(slim, trajectory):
  exp, out = slim
  dense, *branches = out.records
  assert dense["method"] == "dense" and dense["l1_penalty"] == 1e-2
  assert [(r["method"], r["round"], r["prune_epoch"]) for r in branches] == [("slimming", 1, 2), ("slimming", 2, 3)]
  dense_prunable = masks.count(masks.init(exp.init_params), exp.which)[1]
  for record, state in zip(branches, out.states[1:]):
    keep = structured.channel_masks(trajectory[record["prune_epoch"] - 1].params, 0.5, MODEL)
    assert record["layer_channels"] == {bn: [int(k.sum()), k.size] for bn, k in keep.items()}
    assert record["channels_kept"] == sum(int(k.sum()) for k in keep.values())
    assert record["channels_total"] - record["channels_kept"] == round(0.5 * record["channels_total"])
    # The retrained network is physically narrower: exactly the kept channels in every pruned conv.
    assert all(kernel_width(state.params, bn) == int(k.sum()) for bn, k in keep.items())
    assert record["epochs_trained"] == 1
    assert record["accuracy_drop"] == dense["test_accuracy"] - record["test_accuracy"]
    params, prunable = compression.count_params(state.params), masks.count(state.masks, exp.which)[1]
    assert record["params_remaining"] == record["params"] == record["nonzero_params"] == params
    assert record["params_total"] == compression.count_params(exp.init_params)
    assert record["structured_sparsity"] == record["model_sparsity"] == 1 - params / record["params_total"]
    assert record["sparsity"] == 1 - prunable / dense_prunable > 0.3
    narrow = models.get(**record["model_kwargs"])
    assert record["flops"] == record["nonzero_flops"] == compression.flops(narrow, state.params, INPUT_SHAPE)
    dense_flops = compression.flops(exp.model, exp.init_params, INPUT_SHAPE)
    assert record["theoretical_speedup"] == dense_flops / record["flops"] > 1
    assert record["compression_ratio"] == record["params_total"] / params
    assert record["inference_time_s"] > 0 and record["dense_inference_time_s"] > 0
    assert record["inference_batch"] == 16 and record["retrain_from"] == "pruned"


def test_masked_full_width_network_is_the_rebuilt_one(slim, trajectory):
  exp, out = slim
  for record in out.records[1:]:
    assert record["accuracy_before_retrain"] == pytest.approx(record["rebuilt_accuracy_before_retrain"], abs=1e-6)
  # The same on the logits, at the last pruning epoch.
  pruned = trajectory[-1]
  keep = structured.channel_masks(pruned.params, 0.5, MODEL)
  mask = structured.expand_channel_masks(pruned.params, keep)
  trainer = methods_structured.penalised_trainer(exp, 3, 1e-2)
  masked = trainer.logits(pruned.replace(params=masks.apply(pruned.params, mask)), exp.data["test"][0])
  kwargs, rebuilt = structured.rebuild(MODEL, {}, pruned.variables, keep)
  narrow = exp.trainer(1, model=models.get(MODEL, num_classes=10, **kwargs))
  state = narrow.init_state(rebuilt["params"], rebuilt["batch_stats"], masks.init(rebuilt["params"]), exp.key("x"))
  np.testing.assert_allclose(narrow.logits(state, exp.data["test"][0]), masked, atol=1e-4, rtol=1e-4)
  assert len(np.unique(np.argmax(masked, -1))) > 1   # a function worth comparing, not one constant class


def test_dense_record_has_the_models_compression_figures(slim):
  exp, out = slim
  dense, state = out.records[0], out.states[0]
  params = compression.count_params(exp.init_params)
  assert dense["params"] == params == compression.count_params(state.params)
  assert dense["nonzero_params"] == compression.count_nonzero(state.params)
  assert dense["flops"] == dense["nonzero_flops"] == compression.flops(exp.model, state.params, INPUT_SHAPE)
  assert dense["compression_ratio"] == params / dense["nonzero_params"] and dense["theoretical_speedup"] == 1.0


def test_l1_penalty_shrinks_the_bn_scales(slim):
  exp, out = slim
  trainer = exp.trainer(exp.config.train.epochs)   # no regularizer
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks.init(exp.init_params), exp.key("dense"))
  plain, _ = fit(trainer, state, exp.data, exp.config.train.epochs)
  l1 = lambda params: sum(float(s.sum()) for s in structured.bn_scales(params).values())
  assert l1(out.states[0].params) < 0.8 * l1(plain.params)


def test_early_bird_draws_the_ticket_where_the_detector_does(slim, trajectory):
  exp, _ = slim
  exp.config.early_bird.update({"ratio": 0.5, "window": 1, "epsilon": 0.35, "max_epochs": 0})
  out = Collect()
  drive(methods_structured.early_bird(exp, out))
  (record,) = out.records
  replayed = [structured.channel_masks(s.params, 0.5, MODEL) for s in trajectory]
  ticket, distances = early_bird.first_ticket(replayed, window=1, epsilon=0.35)
  assert ticket is not None and record["detected"]
  assert record["detection_epoch"] == record["prune_epoch"] == ticket + 1
  assert record["distance_curve"] == [None if math.isnan(d) else d for d in distances[:ticket + 1]]
  assert record["distance_curve"][ticket] < 0.35 and record["accuracy_drop"] is None
  assert record["layer_channels"] == {bn: [int(k.sum()), k.size] for bn, k in replayed[ticket].items()}
  assert [row["epoch"] for row in record["search_curve"]] == list(range(1, ticket + 2))
  section = report.structure_section(out.records)
  assert f"ticket drawn at epoch {ticket + 1}" in section and "![distance curve](distance_curve.png)" in section


def test_report_tables_the_rebuilt_networks(slim):
  _, out = slim
  section = report.structure_section(out.records)
  assert "## Compression" in section and "## Rebuilt narrower networks" in section
  for r in out.records[1:]:
    assert (f"| slimming | {r['round']} | {r['prune_epoch']} | {r['channels_kept']:,} | {r['channels_total']:,} | "
            f"{r['structured_sparsity']:.3f} |") in section
  assert "## Early-Bird" not in section


def test_early_bird_without_a_ticket_prunes_at_max_epochs(slim):
  exp, _ = slim
  exp.config.early_bird.update({"ratio": 0.5, "window": 3, "epsilon": 0.1, "max_epochs": 3})
  out = Collect()
  drive(methods_structured.early_bird(exp, out))   # 3 masks: never 3 earlier ones to compare with
  (record,) = out.records
  assert not record["detected"] and record["detection_epoch"] is None
  assert record["prune_epoch"] == 3 and record["distance_curve"] == [None, None, None]
  assert "no ticket; pruned at epoch 3" in report.structure_section(out.records)


def test_a_rebuilt_ticket_reloads_from_its_metadata(slim, tmp_path):
  _, out = slim
  record, state, rewind = out.records[-1], out.states[-1], out.rewinds[-1]
  checkpoint.save_ticket(str(tmp_path / "ticket"), state, rewind, record["model_kwargs"])
  meta = checkpoint.load_metadata(str(tmp_path / "ticket"))
  assert meta["name"] == MODEL and meta["num_classes"] == 10 and len(meta["widths"]) == 8
  assert meta == record["model_kwargs"]   # JSON's lists come back as the tuples that were saved
  model = models.get(**meta)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, *INPUT_SHAPE), np.float32)))
  ticket = checkpoint.load_ticket(str(tmp_path / "ticket"))
  assert jax.tree.map(np.shape, ticket["params"]) == jax.tree.map(lambda s: s.shape, shapes["params"])
  assert checkpoint.load_metadata(str(tmp_path)) is None


def test_eval_mode_builds_a_rebuilt_ticket_from_its_metadata(slim, digits_path, tmp_path):
  _, out = slim
  record, state, rewind = out.records[-1], out.states[-1], out.rewinds[-1]
  ticket = str(tmp_path / "ticket")
  checkpoint.save_ticket(ticket, state, rewind, cli.ticket_metadata(record))   # as a training run saves it
  # The config's model is the full-width one the run started from, not the rebuilt network.
  config = tiny_config(digits_path, mode="eval", restore=ticket, workdir=str(tmp_path / "eval"))
  (run,) = cli.run(config)
  assert run["test_accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-6)
  # The evaluated network is the rebuilt one, reported against the full-width network as in training.
  assert run["params_remaining"] == record["params_remaining"] < run["params_total"] == record["params_total"]
  assert run["sparsity"] == pytest.approx(record["sparsity"]) and record["sparsity"] > 0
  assert run["model_sparsity"] == pytest.approx(record["model_sparsity"])
  assert run["params"] == record["params"] and run["compression_ratio"] == pytest.approx(record["compression_ratio"])
  assert run["full_width_model"] == record["full_width_model"]
  with open(tmp_path / "eval" / "results.json") as f:
    reported = json.load(f)["config"]["model"]
  assert reported == {"name": MODEL, "widths": list(record["model_kwargs"]["widths"])}
  assert config.model.widths == (8,) * 8   # the caller's config is left as it was


def test_a_ticket_for_another_number_of_classes_is_a_user_error(slim, digits_path, tmp_path):
  _, out = slim
  ticket = str(tmp_path / "ticket")
  checkpoint.save_ticket(ticket, out.states[-1], out.rewinds[-1], {**out.records[-1]["model_kwargs"], "num_classes": 3})
  config = tiny_config(digits_path, mode="eval", restore=ticket, workdir=str(tmp_path / "eval"))
  with pytest.raises(UserError, match=r"config.restore=.*ticket.* 3 classes.* 10") as error:
    cli.run(config)
  assert "\n" not in str(error.value)


def test_continue_resumes_the_schedule_at_the_pruning_epoch(slim, trajectory, monkeypatch):
  """retrain_from=continue: the rebuilt network of epoch e trains epochs e+1 .. retrain_epochs of the schedule."""
  exp, _ = slim
  monkeypatch.setitem(exp.config.slimming, "retrain_from", "continue")
  monkeypatch.setitem(exp.config.slimming, "retrain_epochs", 3)
  monkeypatch.setitem(exp.config.optimizer, "schedule", "step")   # the retraining trainers are built below
  monkeypatch.setitem(exp.config.optimizer, "milestones", (2,))
  trainer = methods_structured.penalised_trainer(exp, exp.config.train.epochs, exp.config.slimming.penalty)
  got = Collect()
  for epoch in (2, 3):
    keep = structured.channel_masks(trajectory[epoch - 1].params, exp.config.slimming.ratio, MODEL)
    drive(methods_structured._prune_and_retrain(exp, trainer, trajectory[epoch - 1], keep, "slimming", epoch - 1,
                                                None, got, 0.0, prune_epoch=epoch))
  at_2, at_3 = got.records
  steps = trainer.steps_per_epoch
  assert at_2["retrain_start_epoch"] == 2 and [row["epoch"] for row in at_2["curve"]] == [3]
  assert int(got.states[0].step) == 3 * steps
  assert at_2["curve"][0]["lr"] == pytest.approx(0.1 * exp.config.optimizer.lr)   # after the milestone at 2
  # pruned at the schedule's end: nothing left to train, the record is the rebuilt network as pruned
  assert at_3["epochs_trained"] == 0
  assert at_3["test_accuracy"] == pytest.approx(at_3["rebuilt_accuracy_before_retrain"], abs=1e-6)


@pytest.mark.parametrize("key,value,message", [
    ("slimming.criterion", "gamma", "config.slimming.criterion='gamma'; allowed: bn_scale, l1_filter"),
    ("slimming.retrain_from", "rewind", "config.slimming.retrain_from='rewind'"),
    ("slimming.retrain_from", "continue", r"up to 3; config.slimming.retrain_epochs=1 must be 0 or at least that"),
    ("slimming.epochs", (3, 2), r"config.slimming.epochs=\(3, 2\)"),
    ("slimming.epochs", (4,), r"config.slimming.epochs=\(4,\)"),
    ("early_bird.max_epochs", -1, "config.early_bird.max_epochs=-1"),
    ("model.name", "mlp", "config.model.name='mlp' cannot be"),
])
def test_bad_structured_settings_are_user_errors(key, value, message):
  with pytest.raises(UserError, match=message):
    experiment.build(tiny_config(**{key: value}))


def test_epochs_of_the_other_method_are_not_held_against_a_shorter_run():
  # configs/cifar_resnet_slimming.py prunes at epoch 160; its early_bird run may still train for 4, and the
  # reverse; within the method itself the range holds.
  experiment.validate(tiny_config(**{"method": "early_bird", "slimming.epochs": (160,)}))
  experiment.validate(tiny_config(**{"early_bird.max_epochs": 160}))
  with pytest.raises(UserError, match="config.early_bird.max_epochs=160"):
    experiment.validate(tiny_config(**{"method": "early_bird", "early_bird.max_epochs": 160}))


class ZooExperiment:
  """What `methods_structured.channel_groups` reads of an Experiment: a zoo model at random weights."""

  def __init__(self, name, **kwargs):
    self.model = models.get(name, num_classes=10, **kwargs)
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3) if name.startswith("vgg") else (1, 8, 8, 3))
    self.data, self.inputs, self.trainers = {"train": (x, None)}, jax.numpy.asarray, {}
    shapes = jax.eval_shape(functools.partial(self.model.init, train=False), jax.random.key(0), x)
    rng = np.random.default_rng(1)   # no BN scale or filter norm equal to another
    draw = lambda s: jax.numpy.asarray(rng.normal(size=s.shape) + 0.1, s.dtype)
    self.init_params, self.init_batch_stats = jax.tree.map(draw, shapes["params"]), shapes["batch_stats"]
    self.init_batch_stats = jax.tree.map(lambda s: jax.numpy.ones(s.shape, s.dtype), self.init_batch_stats)

  def cached(self, key, build):
    return self.trainers.setdefault(key, build())


@pytest.mark.parametrize("name,kwargs", [("vgg11", dict(widths=(4, 6, 6, 6, 8, 8, 8, 5))),
                                         ("resnet20", dict(width=4)),
                                         ("resnet20", dict(width=4, bottleneck=True))])
def test_channels_chosen_on_the_traced_groups_are_the_handwritten_choice(name, kwargs):
  exp = ZooExperiment(name, **kwargs)
  groups = methods_structured.channel_groups(exp)
  assert list(groups) == structured.prunable_bns(exp.init_params)   # in network order
  variables = {"params": exp.init_params, "batch_stats": exp.init_batch_stats}
  for criterion, handwritten in [("bn_scale", structured.channel_masks), ("l1_filter", structured.l1_filter_masks)]:
    got = methods_structured.channel_keep(exp, variables, 0.4, criterion)
    want = handwritten(exp.init_params, 0.4, name)
    assert list(got) == list(want)
    for bn in want:
      np.testing.assert_array_equal(got[bn], want[bn], err_msg=f"{criterion} {bn}")
