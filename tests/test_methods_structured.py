"""Network slimming and Early-Bird end to end on a tiny VGG-11: records, shrunk networks, tickets, detection.

The data are sklearn's digits upsampled to 32x32 (VGG-11 halves the side five times), 512 training examples;
VGG-11 at 8 channels per conv learns them within 3 epochs. One slimming run, made as the command line makes
it (tickets and results.json in a workdir), serves every test: compiling dominates the time, so the
Early-Bird runs prune at epochs the slimming run also prunes at, where the shrunk network, and so its
compiled trainer, is the same. The channels each record keeps are checked against network slimming computed
here by hand from the BatchNorm scales; the criteria config.slimming.criterion chooses, on a tiny ResNet.
"""

import functools
import json
import math
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import sklearn.datasets

from lth_jax import cli, experiment, masks, models, report
from lth_jax.config import base
from lth_jax.errors import UserError
from lth_jax.methods import structured as methods_structured
from lth_jax.metrics import compression
from lth_jax.sparsity import early_bird, graph
from lth_jax.training import checkpoint
from tests.helpers import drive, fit, override, Collect

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
  c.log.tensorboard = False
  return override(c, **overrides)


@pytest.fixture(scope="module")
def digits_path(tmp_path_factory) -> str:
  return digits32(tmp_path_factory.mktemp("data") / "digits32.npz")


@pytest.fixture(scope="module")
def slim(digits_path, tmp_path_factory):
  """The slimming run as the command line makes it: (exp, its records, each record's ticket as saved)."""
  config = tiny_config(digits_path, workdir=str(tmp_path_factory.mktemp("slim")))
  exp = experiment.build(config)
  cli.prepare_workdir(config.workdir)
  records = cli._train(exp, config, "")
  saved = [types.SimpleNamespace(path=os.path.join(config.workdir, r["ticket"]),
                                 **checkpoint.load_ticket(os.path.join(config.workdir, r["ticket"])))
           for r in records]
  return exp, records, saved


@pytest.fixture(scope="module")
def trajectory(slim):
  """The full-width training replayed epoch by epoch with the same compiled trainer: state after each epoch."""
  exp = slim[0]
  trainer = methods_structured.penalised_trainer(exp, exp.config.train.epochs, exp.config.slimming.penalty)
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks.init(exp.init_params), exp.key("dense"))
  states = []
  for epoch in range(1, exp.config.train.epochs + 1):
    state, _ = fit(trainer, state, exp.data, epoch)
    states.append(state)
  return states


def hand_slimming(params, ratio) -> dict:
  """Network slimming by hand: |gamma| of bn_0 .. bn_7 ranked together (ties by layer, then channel), the
  round(ratio * all) smallest removed, a layer left empty keeping its largest; keyed by the conv before it."""
  scales = [np.abs(np.asarray(params[f"bn_{i}"]["scale"])) for i in range(8)]
  flat = np.concatenate(scales)
  keep = np.ones(flat.size, bool)
  keep[np.argsort(flat, kind="stable")[:round(ratio * flat.size)]] = False
  out = {}
  for i, (k, s) in enumerate(zip(np.split(keep, np.cumsum([len(x) for x in scales])[:-1]), scales)):
    out[f"conv_{i}"] = k if k.any() else np.arange(len(s)) == np.argmax(s)
  return out


def vgg_flops(widths) -> int:
  """VGG-11's multiply-adds on a 32x32x1 digit at these conv widths: a max-pool after convs 0, 1, 3, 5."""
  w = (1, *widths)
  sides = (32, 16, 8, 8, 4, 4, 2, 2)
  return sum(s * s * 9 * cin * cout for s, cin, cout in zip(sides, w, w[1:])) + w[-1] * 10


def test_slimming_records_and_shrunk_widths(slim, trajectory):
  exp, records, saved = slim
  dense, *branches = records
  assert dense["method"] == "dense" and dense["l1_penalty"] == 1e-2
  assert [(r["method"], r["round"], r["prune_epoch"]) for r in branches] == [("slimming", 1, 2), ("slimming", 2, 3)]
  dense_prunable = masks.count(masks.init(exp.init_params), exp.which)[1]
  for record, ticket in zip(branches, saved[1:]):
    keep = hand_slimming(trajectory[record["prune_epoch"] - 1].params, 0.5)
    assert record["layer_channels"] == {conv: [int(k.sum()), k.size] for conv, k in keep.items()}
    assert record["channels_kept"] == sum(int(k.sum()) for k in keep.values())
    assert record["channels_total"] - record["channels_kept"] == round(0.5 * record["channels_total"])
    assert (record["criterion"], record["scope"]) == ("bn_scale", "global")
    # The retrained network is physically narrower: exactly the kept channels in every pruned conv.
    assert all(ticket.params[conv]["kernel"].shape[-1] == int(k.sum()) for conv, k in keep.items())
    assert record["epochs_trained"] == 1
    assert record["accuracy_drop"] == dense["test_accuracy"] - record["test_accuracy"]
    params, prunable = compression.count_params(ticket.params), masks.count(ticket.masks, exp.which)[1]
    assert record["params_remaining"] == record["params"] == record["nonzero_params"] == params
    assert record["params_total"] == compression.count_params(exp.init_params)
    assert record["structured_sparsity"] == record["model_sparsity"] == 1 - params / record["params_total"]
    assert record["sparsity"] == 1 - prunable / dense_prunable > 0.3
    assert record["flops"] == record["nonzero_flops"] == vgg_flops([int(k.sum()) for k in keep.values()])
    assert record["theoretical_speedup"] == vgg_flops((8,) * 8) / record["flops"] > 1
    assert record["compression_ratio"] == record["params_total"] / params
    assert record["inference_time_s"] > 0 and record["dense_inference_time_s"] > 0
    assert record["inference_batch"] == 16 and record["retrain_from"] == "pruned"


def test_masked_full_width_network_is_the_shrunk_one(slim, trajectory):
  exp, records, _ = slim
  for record in records[1:]:
    assert record["accuracy_before_retrain"] == pytest.approx(record["rebuilt_accuracy_before_retrain"], abs=1e-6)
  # The same on the logits, at the last pruning epoch.
  pruned = trajectory[-1]
  keep = hand_slimming(pruned.params, 0.5)
  groups = [methods_structured.channel_groups(exp)[conv] for conv in keep]
  mask = graph.channel_mask(pruned.variables, groups, list(keep.values()))["params"]
  trainer = methods_structured.penalised_trainer(exp, 3, 1e-2)
  masked = trainer.logits(pruned.replace(params=masks.apply(pruned.params, mask)), exp.data["test"][0])
  shrunk = graph.narrow(pruned.variables, groups, list(keep.values()))
  narrow = exp.trainer(1, model=methods_structured.shrunk_model(exp, {c: int(k.sum()) for c, k in keep.items()}))
  state = narrow.init_state(shrunk["params"], shrunk["batch_stats"], masks.init(shrunk["params"]), exp.key("x"))
  np.testing.assert_allclose(narrow.logits(state, exp.data["test"][0]), masked, atol=1e-4, rtol=1e-4)
  assert len(np.unique(np.argmax(masked, -1))) > 1   # a function worth comparing, not one constant class


def test_dense_record_has_the_models_compression_figures(slim):
  exp, records, saved = slim
  dense, params = records[0], saved[0].params
  count = compression.count_params(exp.init_params)
  assert dense["params"] == count == compression.count_params(params)
  assert dense["nonzero_params"] == compression.count_nonzero(params)
  assert dense["flops"] == dense["nonzero_flops"] == vgg_flops((8,) * 8)
  assert dense["compression_ratio"] == count / dense["nonzero_params"] and dense["theoretical_speedup"] == 1.0


def l1_of_scales(params):
  return sum(float(np.abs(params[f"bn_{i}"]["scale"]).sum()) for i in range(8))


def test_l1_penalty_shrinks_the_bn_scales(slim):
  exp, _, saved = slim
  trainer = exp.trainer(exp.config.train.epochs)   # no regularizer
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks.init(exp.init_params), exp.key("dense"))
  plain, _ = fit(trainer, state, exp.data, exp.config.train.epochs)
  assert l1_of_scales(saved[0].params) < 0.8 * l1_of_scales(plain.params)


def test_early_bird_draws_the_ticket_where_the_detector_does(slim, trajectory):
  exp, _, _ = slim
  exp.config.early_bird.update({"ratio": 0.5, "window": 1, "epsilon": 0.35, "max_epochs": 0})
  out = Collect()
  drive(methods_structured.early_bird(exp, out))
  (record,) = out.records
  replayed = [hand_slimming(s.params, 0.5) for s in trajectory]
  ticket, distances = early_bird.first_ticket(replayed, window=1, epsilon=0.35)
  assert ticket is not None and record["detected"]
  assert record["detection_epoch"] == record["prune_epoch"] == ticket + 1
  assert record["distance_curve"] == [None if math.isnan(d) else d for d in distances[:ticket + 1]]
  assert record["distance_curve"][ticket] < 0.35 and record["accuracy_drop"] is None
  assert record["layer_channels"] == {conv: [int(k.sum()), k.size] for conv, k in replayed[ticket].items()}
  assert [row["epoch"] for row in record["search_curve"]] == list(range(1, ticket + 2))
  section = report.structure_section(out.records)
  assert f"ticket drawn at epoch {ticket + 1}" in section and "![distance curve](distance_curve.png)" in section


def test_report_tables_the_shrunk_networks(slim):
  _, records, _ = slim
  section = report.structure_section(records)
  assert "## Compression" in section and "## Rebuilt narrower networks" in section
  for r in records[1:]:
    assert (f"| slimming | {r['round']} | {r['prune_epoch']} | {r['channels_kept']:,} | {r['channels_total']:,} | "
            f"{r['structured_sparsity']:.3f} |") in section
  assert "## Early-Bird" not in section


def test_early_bird_without_a_ticket_prunes_at_max_epochs(slim):
  exp, _, _ = slim
  exp.config.early_bird.update({"ratio": 0.5, "window": 3, "epsilon": 0.1, "max_epochs": 3})
  out = Collect()
  drive(methods_structured.early_bird(exp, out))   # 3 masks: never 3 earlier ones to compare with
  (record,) = out.records
  assert not record["detected"] and record["detection_epoch"] is None
  assert record["prune_epoch"] == 3 and record["distance_curve"] == [None, None, None]
  assert "no ticket; pruned at epoch 3" in report.structure_section(out.records)


def test_the_run_saves_each_shrunk_ticket_with_what_rebuilds_it(slim):
  exp, records, saved = slim
  assert checkpoint.load_metadata(saved[0].path) is None   # the dense network: config.model itself
  for record, ticket in zip(records[1:], saved[1:]):
    meta = checkpoint.load_metadata(ticket.path)
    assert meta == {"full_width": {"name": MODEL, "num_classes": 10, "widths": (8,) * 8},
                    "layer_channels": {conv: tuple(n) for conv, n in record["layer_channels"].items()}}
    model = methods_structured.shrunk_model(exp, {conv: n[0] for conv, n in meta["layer_channels"].items()})
    shapes = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), np.zeros((1, *INPUT_SHAPE), np.float32)))
    assert jax.tree.map(np.shape, ticket.params) == jax.tree.map(lambda s: s.shape, shapes["params"])


def test_eval_mode_reloads_a_shrunk_ticket_and_reproduces_its_record(slim, digits_path, tmp_path):
  _, records, saved = slim
  record, ticket = records[-1], saved[-1].path
  # The config's model is the full-width one the run started from, as the command line would give it.
  config = tiny_config(digits_path, mode="eval", restore=ticket, workdir=str(tmp_path / "eval"))
  (run,) = cli.run(config)
  assert run["test_accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-6)
  # The evaluated network is the shrunk one, reported against the full-width network as in training.
  assert run["params_remaining"] == record["params_remaining"] < run["params_total"] == record["params_total"]
  assert run["sparsity"] == pytest.approx(record["sparsity"]) and record["sparsity"] > 0
  assert run["model_sparsity"] == pytest.approx(record["model_sparsity"])
  assert run["params"] == record["params"] and run["compression_ratio"] == pytest.approx(record["compression_ratio"])
  assert run["flops"] == record["flops"]
  assert run["full_width_model"] == record["full_width_model"] and run["layer_channels"] == record["layer_channels"]
  with open(tmp_path / "eval" / "results.json") as f:
    reported = json.load(f)["config"]["model"]
  assert reported == {"name": MODEL, "widths": [8] * 8}   # the full-width network it was cut from


def test_a_ticket_for_another_number_of_classes_or_an_old_one_is_a_user_error(slim, digits_path, tmp_path):
  _, records, saved = slim
  meta = cli.ticket_metadata(records[-1])
  ticket = str(tmp_path / "ticket")
  checkpoint.save_ticket(ticket, saved[-1], saved[-1].rewind_params,
                         {**meta, "full_width": {**meta["full_width"], "num_classes": 3}})
  config = tiny_config(digits_path, mode="eval", restore=ticket, workdir=str(tmp_path / "eval"))
  with pytest.raises(UserError, match=r"config.restore=.*ticket.* 3 classes.* 10") as error:
    cli.run(config)
  assert "\n" not in str(error.value)
  with open(os.path.join(ticket, checkpoint.METADATA), "w") as f:   # what an older lth_jax wrote: widths
    json.dump({"name": MODEL, "num_classes": 10, "widths": [8] * 8}, f)
  with pytest.raises(UserError, match="older lth_jax"):
    cli.run(config)


def test_continue_resumes_the_schedule_at_the_pruning_epoch(slim, trajectory, monkeypatch):
  """retrain_from=continue: the shrunk network of epoch e trains epochs e+1 .. retrain_epochs of the schedule."""
  exp, _, _ = slim
  monkeypatch.setitem(exp.config.slimming, "retrain_from", "continue")
  monkeypatch.setitem(exp.config.slimming, "retrain_epochs", 3)
  monkeypatch.setitem(exp.config.optimizer, "schedule", "step")   # the retraining trainers are built below
  monkeypatch.setitem(exp.config.optimizer, "milestones", (2,))
  trainer = methods_structured.penalised_trainer(exp, exp.config.train.epochs, exp.config.slimming.penalty)
  got = Collect()
  for epoch in (2, 3):
    keep = hand_slimming(trajectory[epoch - 1].params, exp.config.slimming.ratio)
    drive(methods_structured._prune_and_retrain(exp, trainer, trajectory[epoch - 1], keep, "slimming", epoch - 1,
                                                None, got, 0.0, prune_epoch=epoch))
  at_2, at_3 = got.records
  steps = trainer.steps_per_epoch
  assert at_2["retrain_start_epoch"] == 2 and [row["epoch"] for row in at_2["curve"]] == [3]
  assert int(got.states[0].step) == 3 * steps
  assert at_2["curve"][0]["lr"] == pytest.approx(0.1 * exp.config.optimizer.lr)   # after the milestone at 2
  # pruned at the schedule's end: nothing left to train, the record is the shrunk network as pruned
  assert at_3["epochs_trained"] == 0
  assert at_3["test_accuracy"] == pytest.approx(at_3["rebuilt_accuracy_before_retrain"], abs=1e-6)


@pytest.mark.parametrize("key,value,message", [
    ("slimming.criterion", "gamma", "config.slimming.criterion='gamma'; allowed: l1, l2, l1_filter, bn_scale, taylor$"),
    ("slimming.scope", "rowwise", "config.slimming.scope='rowwise'; allowed: auto, global, layerwise$"),
    ("slimming.retrain_from", "rewind", "config.slimming.retrain_from='rewind'"),
    ("slimming.retrain_from", "continue", r"up to 3; config.slimming.retrain_epochs=1 must be 0 or at least that"),
    ("slimming.epochs", (3, 2), r"config.slimming.epochs=\(3, 2\)"),
    ("slimming.epochs", (4,), r"config.slimming.epochs=\(4,\)"),
    ("early_bird.max_epochs", -1, "config.early_bird.max_epochs=-1"),
])
def test_bad_structured_settings_are_user_errors(key, value, message):
  with pytest.raises(UserError, match=message):
    experiment.build(tiny_config(**{key: value}))


def test_bn_scale_on_a_model_without_batchnorm_is_refused_before_training(digits_path):
  # an MLP has channel groups (its hidden units) but no BatchNorm to score them by; l1 can
  exp = experiment.build(tiny_config(digits_path, model=ml_collections.ConfigDict({"name": "mlp"}),
                                     **{"slimming.criterion": "l1"}))
  assert list(methods_structured.channel_groups(exp)) == ["hidden_0", "hidden_1"]
  exp.config.slimming.criterion = "bn_scale"   # what experiment.build checks last, through the method's ready
  with pytest.raises(UserError, match="config.slimming.criterion='bn_scale' .* config.model.name='mlp' has none "
                                      "in its prunable channel groups; allowed: l1, l2, l1_filter, taylor$"):
    methods_structured.ready(exp)


def test_epochs_of_the_other_method_are_not_held_against_a_shorter_run():
  # configs/cifar_resnet_slimming.py prunes at epoch 160; its early_bird run may still train for 4, and the
  # reverse; within the method itself the range holds.
  experiment.validate(tiny_config(**{"method": "early_bird", "slimming.epochs": (160,)}))
  experiment.validate(tiny_config(**{"early_bird.max_epochs": 160}))
  with pytest.raises(UserError, match="config.early_bird.max_epochs=160"):
    experiment.validate(tiny_config(**{"method": "early_bird", "early_bird.max_epochs": 160}))


class ZooExperiment:
  """What the structured methods read of an Experiment to choose channels: `model` at random weights (no
  BatchNorm scale or filter norm equal to another), a batch of 6 random examples of `shape`, the config."""

  def __init__(self, model, shape=(8, 8, 3)):
    self.model = model
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, *shape)).astype(np.float32)
    self.data, self.inputs, self.trainers = {"train": (x, rng.integers(0, 10, 6))}, jnp.asarray, {}
    self.config = base()
    self.config.model.name = type(model).__name__
    self.config.train.eval_batch_size = 4   # taylor's gradients: summed over batches of 4 and 2
    shapes = jax.eval_shape(functools.partial(self.model.init, train=False), jax.random.key(0), x[:1])
    draw = lambda s: jnp.asarray(rng.normal(size=s.shape) + 0.1, s.dtype)
    self.init_params = jax.tree.map(draw, shapes["params"])
    self.init_batch_stats = unflatten_bn({bn: {"mean": draw(v["mean"]), "var": jnp.asarray(
        rng.uniform(0.5, 1.5, v["var"].shape), jnp.float32)} for bn, v in flatten_bn(shapes["batch_stats"]).items()})

  @property
  def variables(self):
    return {"params": self.init_params, "batch_stats": self.init_batch_stats}

  def cached(self, key, build):
    if key not in self.trainers:
      self.trainers[key] = build()
    return self.trainers[key]


def flatten_bn(tree, prefix=""):
  """{'stage1_block0/bn1': {'mean', 'var'}} from the nested batch_stats."""
  out = {}
  for k, v in tree.items():
    if "mean" in v:
      out[prefix + k] = v
    else:
      out.update(flatten_bn(v, f"{prefix}{k}/"))
  return out


def unflatten_bn(flat):
  out = {}
  for path, v in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return out


def get(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def blocks(params):
  return [f"stage{s}_block{b}" for s in (1, 2, 3) for b in range(3) if f"stage{s}_block{b}" in params]


@pytest.mark.parametrize("name,kwargs", [("vgg11", dict(widths=(4, 6, 6, 6, 8, 8, 8, 5))),
                                         ("resnet20", dict(width=4)),
                                         ("resnet20", dict(width=4, bottleneck=True))])
def test_the_methods_prune_the_groups_one_layer_makes_and_penalise_their_scales(name, kwargs):
  """VGG: every conv. ResNet: the convs inside a block (bottleneck: conv1, conv2); the block outputs, the
  shortcuts and the stem are summed into the residual streams, which several layers make: they stay whole. But
  the bottleneck ResNet's first block widens the stem through a projection: no addition touches the stem's
  channels, which only the stem makes."""
  exp = ZooExperiment(models.get(name, num_classes=10, **kwargs), (32, 32, 3) if name == "vgg11" else (8, 8, 3))
  groups = methods_structured.channel_groups(exp)
  if name == "vgg11":
    want = [f"conv_{i}" for i in range(8)]
  else:
    inner = ("conv1", "conv2") if kwargs.get("bottleneck") else ("conv1",)
    want = [f"{b}/{conv}" for b in blocks(exp.init_params) for conv in inner]
    want = ["stem_conv"] * bool(kwargs.get("bottleneck")) + want
  assert list(groups) == want   # in network order
  # the slimming penalty: |gamma| of exactly those convs' BatchNorms, and only their gradient is non-zero
  penalty = functools.partial(methods_structured._l1_penalty, 1.0, tuple(groups.values()))
  bns = [conv.replace("conv", "bn") for conv in want]   # stem_conv -> stem_bn, conv_3 -> bn_3
  expected = sum(float(np.abs(get(exp.init_params, bn)["scale"]).sum()) for bn in bns)
  np.testing.assert_allclose(penalty(exp.init_params), expected, rtol=1e-6)
  grads = jax.grad(penalty)(exp.init_params)
  for leaf, g in masks.named_leaves(grads):
    bn = leaf.removesuffix("/scale")
    want_grad = np.sign(get(exp.init_params, leaf)) if bn in bns and leaf.endswith("/scale") else 0
    np.testing.assert_array_equal(g, want_grad, err_msg=leaf)


class Tiny(nn.Module):
  """A stem, a residual block (conv1 -> conv2, added to the stem), a stride-2 conv3, a mean, a Dense head;
  BatchNorm after every conv. The methods' groups: conv1's channels and conv3's (the stream, which the stem
  and conv2 both make, stays whole)."""

  @nn.compact
  def __call__(self, x, train=False):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
    h = nn.relu(bn("bn0")(nn.Conv(4, (3, 3), use_bias=False, name="stem")(x)))
    y = nn.relu(bn("bn1")(nn.Conv(5, (3, 3), use_bias=False, name="conv1")(h)))
    h = nn.relu(h + bn("bn2")(nn.Conv(4, (3, 3), use_bias=False, name="conv2")(y)))
    h = nn.relu(bn("bn3")(nn.Conv(6, (3, 3), strides=2, use_bias=False, name="conv3")(h)))
    return nn.Dense(10, name="head")(h.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def tiny():
  return ZooExperiment(Tiny(), (6, 6, 3))


# (the conv making the channels, its BatchNorm, the layer reading them, how to take channel c from that one)
TINY_GROUPS = [("conv1", "bn1", "conv2", lambda w, c: w[:, :, c, :]), ("conv3", "bn3", "head", lambda w, c: w[c, :])]


def hand_scores(exp, criterion) -> list[np.ndarray]:
  """Tiny's groups scored by hand: channel c is the producer's filter [..., c], its BatchNorm's entry c and
  the consumer's input weights for c."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), exp.init_params)
  if criterion == "taylor":   # the mean cross-entropy over all 6 examples in one batch, eval-mode BatchNorm
    x, y = exp.data["train"]
    loss = lambda params: -jnp.mean(jax.nn.log_softmax(exp.model.apply(
        {"params": params, "batch_stats": exp.init_batch_stats}, jnp.asarray(x), train=False))[jnp.arange(6), y])
    g = jax.tree.map(lambda a: np.asarray(a, np.float64), jax.jit(jax.grad(loss))(exp.init_params))
  out = []
  for conv, bn, reader, rows in TINY_GROUPS:
    w, gamma, beta, nxt = p[conv]["kernel"], p[bn]["scale"], p[bn]["bias"], p[reader]["kernel"]
    per = lambda f: np.asarray([f(c) for c in range(w.shape[-1])])
    if criterion == "l1":
      out.append(per(lambda c: np.abs(w[..., c]).sum() + np.abs(rows(nxt, c)).sum()))
    elif criterion == "l2":
      out.append(per(lambda c: (w[..., c] ** 2).sum() + (rows(nxt, c) ** 2).sum()))
    elif criterion == "l1_filter":
      out.append(per(lambda c: np.abs(w[..., c]).sum()))
    elif criterion == "bn_scale":
      out.append(np.abs(gamma))
    else:
      out.append(per(lambda c: abs((w[..., c] * g[conv]["kernel"][..., c]).sum() + gamma[c] * g[bn]["scale"][c]
                                   + beta[c] * g[bn]["bias"][c] + (rows(nxt, c) * rows(g[reader]["kernel"], c)).sum())))
  return out


def hand_select(scores, ratio, scope):
  """round(ratio * n) lowest removed over all groups ("global") or in each; a group never emptied."""
  if scope == "layerwise":
    return [k for s in scores for k in hand_select([s], ratio, "global")]
  flat = np.concatenate(scores)
  keep = np.ones(flat.size, bool)
  keep[np.argsort(flat, kind="stable")[:round(ratio * flat.size)]] = False
  parts = np.split(keep, np.cumsum([len(s) for s in scores])[:-1])
  return [k if k.any() else np.arange(len(s)) == np.argmax(s) for k, s in zip(parts, scores)]


@pytest.mark.parametrize("criterion,scope,resolved", [
    ("l1", "auto", "global"), ("l2", "auto", "global"), ("l1_filter", "auto", "layerwise"),
    ("bn_scale", "auto", "global"), ("taylor", "auto", "global"),
    ("l1", "layerwise", "layerwise"), ("l1_filter", "global", "global")])
def test_the_configured_criterion_and_scope_choose_the_channels(tiny, criterion, scope, resolved):
  tiny.config.slimming.criterion, tiny.config.slimming.scope = criterion, scope
  assert methods_structured.scope(tiny.config) == resolved
  got = methods_structured.channel_keep(tiny, tiny.variables, 0.45)   # 5 of 11 globally; 2 of 5 and 3 of 6
  assert list(got) == ["conv1", "conv3"]
  for (conv, k), w in zip(got.items(), hand_select(hand_scores(tiny, criterion), 0.45, resolved)):
    np.testing.assert_array_equal(k, w, err_msg=f"{criterion} {conv}")
