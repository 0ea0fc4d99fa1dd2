"""Structured pruning methods: network slimming and Early-Bird tickets, both ending in a physically narrower network.

Both train the full-width network from theta_0 with config.slimming.penalty * sum|gamma| over the BatchNorm
scales of the prunable channel groups added to the loss (with penalty 0 this is exactly `methods.dense`'s run:
same trainer, same key), choose whole channels to remove, cut them out of the network and retrain it
(config.slimming.retrain_from, retrain_epochs): from the kept weights at epoch 0 of the retraining schedule
("pruned"), from a fresh initialisation ("init": the full-width network's, its kept channels), or from the kept
weights with the schedule continuing at the pruning epoch ("continue", the ResNet-20 seed's alternative: the
branch pruned at epoch e retrains retrain_epochs - e epochs, the same total training as the dense network).

Nothing here knows a model. The channel groups are read from the model's traced programs (`channel_groups`:
`models.shrunk.groups`, eval mode and training); the methods prune those whose channels one layer makes
(`group_criteria.producers`), named after it ('conv_3', 'stage1_block0/conv1'). A residual stream, which
several layers add into, stays whole, as in Liu et al.'s ResNets; so does a depthwise convolution's group. The
channels are scored by config.slimming.criterion (`group_criteria`: l1, l2, l1_filter, bn_scale, taylor; taylor's
gradients are of the mean cross-entropy over the training split, BatchNorm on its running statistics) and
chosen over all groups at once or in each (config.slimming.scope; "auto": per layer for l1_filter, Li et al.'s
rule, else one global ranking, Liu et al.'s threshold). The narrower network is `models.shrunk.Shrunk`: the
model's own program with the pruned channels removed from every shape (`graph.narrow_function`), trained and
evaluated by the same Trainer; its ticket holds only the kept channels.

- `slimming` (Liu et al. 2017): the trained full-width network is recorded as method "dense" (with its
  `l1_penalty`); then one branch per epoch in config.slimming.epochs (default: the last) prunes the weights of
  that epoch and is recorded as method "slimming", round = branch number (1, 2, ...).
- `early_bird` (You et al. 2020): after every epoch, the channel mask for config.early_bird.ratio goes to
  `EarlyBird`; the network is pruned at the first epoch whose mask is within epsilon of the last `window`
  ones, or at max_epochs (`detected: false`). One record, method "early_bird", round 1; no full dense run.

A pruned record holds evaluation.record's fields, where for the narrower network (which has no zero masks):
  sparsity            1 - its prunable weights / the full-width network's (the leaves exp.which marks, so
                      config.prune.exclude applies), comparable with the unstructured methods' sparsity;
  structured_sparsity 1 - all its parameters / the full-width network's (= model_sparsity here);
  params_remaining, params_total: its parameters, the full-width network's;
  params ... theoretical_speedup: compression.figures against the full-width network;
and: prune_epoch, channels_kept, channels_total, layer_channels {group: [kept, total]}, accuracy_before_retrain
(the full-width network at the pruning epoch with the channels masked to zero) and
rebuilt_accuracy_before_retrain (the narrower network before retraining: the same function, so the same
value), full_width_model (models.get's arguments for the network it was cut from; with layer_channels saved
beside its ticket, which eval mode rebuilds from them), retrain_from, retrain_start_epoch (the schedule's
epoch where retraining starts: the pruning epoch for "continue", else 0), inference_time_s and
dense_inference_time_s (median forward pass over a test batch of config.train.batch_size examples, narrower
and full-width network on the same device), inference_speedup (their ratio), ratio, l1_penalty, criterion,
scope; early_bird adds detected, detection_epoch (1-based, None when not detected), distance_curve (per epoch
from 1, the largest distance to the previous `window` masks; None before there are `window` of them),
window, epsilon and search_curve (the search run's per-epoch history).
"""

import dataclasses
import functools
import math

import jax
import ml_collections
import numpy as np
from absl import logging

from lth_jax.errors import UserError, check
from lth_jax.methods import cohort
from lth_jax.methods import common
from lth_jax.methods.registry import Recorder, register
from lth_jax.metrics import compression
from lth_jax.models import shrunk
from lth_jax.sparsity import graph, group_criteria
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity.early_bird import EarlyBird
from lth_jax.training import Trainer, TrainState
from lth_jax.training.step import cross_entropy

STRUCTURED = ("slimming", "early_bird")
RETRAIN_FROM = ("pruned", "init", "continue")
SCOPES = ("auto",) + group_criteria.SCOPES


def validate(config: ml_collections.ConfigDict) -> None:
  """config.slimming and config.early_bird; their epochs only where the method that reads them runs."""
  s, eb, epochs = config.slimming, config.early_bird, config.train.epochs
  check(s.penalty >= 0, f"config.slimming.penalty={s.penalty} must be >= 0")
  check(0.0 < s.ratio < 1.0, f"config.slimming.ratio={s.ratio} must be in (0, 1)")
  # Epochs are checked against train.epochs only where they are used: a config shared by several methods
  # (configs/cifar_resnet_slimming.py with --config.method=early_bird) may shorten training.
  check(config.method != "slimming" or (all(isinstance(e, int) and 1 <= e <= epochs for e in s.epochs)
                                        and list(s.epochs) == sorted(set(s.epochs))),
        f"config.slimming.epochs={tuple(s.epochs)} must be increasing epochs in [1, config.train.epochs={epochs}]")
  check(s.criterion in group_criteria.CRITERIA,
        f"config.slimming.criterion={s.criterion!r}; allowed: {', '.join(group_criteria.CRITERIA)}")
  check(s.scope in SCOPES, f"config.slimming.scope={s.scope!r}; allowed: {', '.join(SCOPES)}")
  check(s.retrain_from in RETRAIN_FROM,
        f"config.slimming.retrain_from={s.retrain_from!r}; allowed: {', '.join(RETRAIN_FROM)}")
  check(s.retrain_epochs >= 0, f"config.slimming.retrain_epochs={s.retrain_epochs} must be >= 0 (0 = train.epochs)")
  if s.retrain_from == "continue" and config.method in STRUCTURED:   # the schedule must reach the pruning epoch
    last_prune = max(s.epochs or (epochs,)) if config.method == "slimming" else (eb.max_epochs or epochs)
    check(last_prune <= (s.retrain_epochs or epochs),
          f"config.slimming.retrain_from='continue' resumes the retraining schedule at the pruning epoch, up to "
          f"{last_prune}; config.slimming.retrain_epochs={s.retrain_epochs} must be 0 or at least that")
  check(0.0 < eb.ratio < 1.0, f"config.early_bird.ratio={eb.ratio} must be in (0, 1)")
  check(eb.window >= 1, f"config.early_bird.window={eb.window} must be >= 1")
  check(0.0 < eb.epsilon <= 1.0, f"config.early_bird.epsilon={eb.epsilon} must be in (0, 1]")
  check(eb.max_epochs >= 0 and (config.method != "early_bird" or eb.max_epochs <= epochs),
        f"config.early_bird.max_epochs={eb.max_epochs} must be in [0, config.train.epochs={epochs}] (0 = all)")


def ready(exp) -> None:
  """The model has channels the method can remove, and the criterion can score some of them."""
  config, groups = exp.config, channel_groups(exp)
  check(bool(groups), f"config.method={config.method!r} removes channels; config.model.name={config.model.name!r} "
        "has no channel group one layer makes that its programs (eval and training) leave free to remove")
  if config.slimming.criterion == "bn_scale":
    scored = group_criteria.group_scores(_variables(exp), list(groups.values()), "bn_scale")
    allowed = ", ".join(c for c in group_criteria.CRITERIA if c != "bn_scale")
    check(any(s is not None for s in scored),
          f"config.slimming.criterion='bn_scale' scores channels by the BatchNorm scale after them; "
          f"config.model.name={config.model.name!r} has none in its prunable channel groups; allowed: {allowed}")


def scope(config: ml_collections.ConfigDict) -> str:
  """config.slimming.scope, "auto" resolved: layerwise for l1_filter (Li et al.), else global (Liu et al.)."""
  s = config.slimming
  if s.scope != "auto":
    return s.scope
  return "layerwise" if s.criterion == "l1_filter" else "global"


def penalised_trainer(exp, epochs: int, penalty: float) -> Trainer:
  """exp.trainer(epochs) with penalty * sum|gamma| over the prunable groups' BatchNorm scales added to the loss.

  One compiled trainer per experiment family and penalty: early_bird (and tests) reuse slimming's.
  """
  trainer = exp.trainer(epochs)
  if not penalty:
    return trainer
  groups = tuple(channel_groups(exp).values())
  return exp.cached(("penalised", epochs, penalty),
                    lambda: dataclasses.replace(trainer, regularizer=functools.partial(_l1_penalty, penalty, groups)))


def _l1_penalty(penalty: float, groups, params):
  return penalty * group_criteria.bn_scale_penalty({"params": params}, groups)


def _variables(exp) -> dict:
  """theta_0 as the variables dict the model applies to (no empty batch_stats)."""
  return {"params": exp.init_params, **({"batch_stats": exp.init_batch_stats} if exp.init_batch_stats else {})}


def channel_groups(exp) -> dict[str, graph.Group]:
  """{name: group} for the channel groups the methods prune, in program order; traced once per family.

  The groups of both the model's programs (`models.shrunk.groups`) whose channels one layer makes,
  each named after that layer ('conv_3' for 'params/conv_3/kernel').
  """
  def trace():
    variables = _variables(exp)
    out = {}
    for g in shrunk.groups(exp.model, variables, exp.inputs(exp.data["train"][0][:1])):
      made_by = group_criteria.producers(variables, g)
      if len(made_by) == 1:
        out[made_by[0].removeprefix("params/").rpartition("/")[0]] = g
    return out
  return exp.cached(("channel_groups",), trace)


def channel_keep(exp, variables, ratio: float) -> dict[str, np.ndarray]:
  """{group name: bool keep-array} removing `ratio` of the channels by config.slimming.criterion and scope."""
  groups, criterion = channel_groups(exp), exp.config.slimming.criterion
  grads = {"params": taylor_grads(exp, variables)} if criterion == "taylor" else None
  keep = group_criteria.channel_keep(variables, list(groups.values()), ratio, criterion, scope(exp.config), grads)
  return dict(zip(groups, keep))


def taylor_grads(exp, variables):
  """d/dparams of the mean cross-entropy over the training split, BatchNorm on its running statistics."""
  x, y = exp.data["train"]
  size, n = exp.config.train.eval_batch_size, len(y)
  grad_sum = exp.cached(("taylor_grads",), lambda: jax.jit(jax.grad(functools.partial(_loss_sum, exp))))
  total = None
  for start in range(0, n, size):
    g = grad_sum(variables["params"], variables, x[start:start + size], y[start:start + size])
    total = g if total is None else jax.tree.map(lambda a, b: a + b, total, g)
  return jax.tree.map(lambda a: a / n, total)


def _loss_sum(exp, params, variables, x, y):
  logits = exp.model.apply({**variables, "params": params}, exp.inputs(x), train=False)
  return cross_entropy(logits, y).sum()


def _initial_state(exp, trainer: Trainer) -> TrainState:
  # The dense run's key: with penalty 0 the full-width training is methods.dense's, epoch for epoch.
  return trainer.init_state(exp.init_params, exp.init_batch_stats, masks_lib.init(exp.init_params),
                            exp.key("dense"))


def slimming_epochs(exp) -> int:
  """The penalised dense run, then each pruning epoch's narrower network retrained (`_prune_and_retrain`)."""
  cfg, epochs = exp.config.slimming, exp.config.train.epochs
  retrain = cfg.retrain_epochs or epochs
  return epochs + sum(max(0, retrain - (e if cfg.retrain_from == "continue" else 0))
                      for e in set(tuple(cfg.epochs) or (epochs,)))


# early_bird plans nothing: its search stops when the channel mask settles, so its bar counts without a total
@register("slimming", validate=validate, planned=slimming_epochs, ready=ready)
def slimming(exp, recorder: Recorder):
  """Train with the L1 penalty; one branch per pruning epoch: prune channels, shrink the network, retrain."""
  started, cfg, epochs = exp.now(), exp.config.slimming, exp.config.train.epochs
  trainer = penalised_trainer(exp, epochs, cfg.penalty)
  state, history, snapshots, best = _initial_state(exp, trainer), [], {}, None
  prune_at = tuple(cfg.epochs) or (epochs,)
  for stop in sorted({*prune_at, epochs}):
    # prune.from_best: the branch at epoch e prunes the best weights of the first e epochs (the ResNet-20 seed)
    if exp.config.prune.from_best:
      state, rows, best = yield from common.fit_keeping_best(trainer, state, stop, "slimming dense", exp.data, best)
    else:
      state, rows = yield from cohort.fit(trainer, state, stop, "slimming dense", exp.data)
      best = (None, stop, state)
    history += rows
    if stop in prune_at:
      snapshots[stop] = best[1:]
  exp.evaluator.set_reference(trainer, state)
  dense = exp.record(state, history, "dense", 0, None, None, started, trainer=trainer)
  dense = dataclasses.replace(dense, accuracy_drop=0.0).with_extra(l1_penalty=cfg.penalty)
  recorder(dense, state, exp.init_params)
  for round_, (epoch, (weights_epoch, pruned)) in enumerate(snapshots.items(), 1):
    keep = channel_keep(exp, pruned.variables, cfg.ratio)
    yield from _prune_and_retrain(exp, trainer, pruned, keep, "slimming", round_, dense.test_accuracy, recorder,
                       exp.now(), prune_epoch=epoch, pruned_from_epoch=weights_epoch, ratio=cfg.ratio,
                       l1_penalty=cfg.penalty)


@register("early_bird", validate=validate, ready=ready)
def early_bird(exp, recorder: Recorder):
  """Train until the channel mask settles (or max_epochs), prune and shrink there, retrain."""
  started, cfg, config = exp.now(), exp.config.early_bird, exp.config
  trainer = penalised_trainer(exp, config.train.epochs, config.slimming.penalty)
  state, history = _initial_state(exp, trainer), []
  detector = EarlyBird(cfg.window, cfg.epsilon)
  for epoch in range(1, (cfg.max_epochs or config.train.epochs) + 1):
    state, rows = yield from cohort.fit(trainer, state, epoch, "early_bird search", exp.data)
    history += rows
    keep = channel_keep(exp, state.variables, cfg.ratio)
    if detector.update(keep):
      break
  detected = detector.ticket_epoch is not None
  logging.info("early_bird: %s at epoch %d", "ticket drawn" if detected else "no ticket; pruning", epoch)
  curve = [None if math.isnan(d) else d for d in detector.distances]  # JSON has no NaN
  yield from _prune_and_retrain(exp, trainer, state, keep, "early_bird", 1, None, recorder, started, prune_epoch=epoch,
                     detected=detected, detection_epoch=epoch if detected else None, distance_curve=curve,
                     window=cfg.window, epsilon=cfg.epsilon, ratio=cfg.ratio, l1_penalty=config.slimming.penalty,
                     search_curve=history)


def _prune_and_retrain(exp, trainer: Trainer, pruned: TrainState, keep: dict, method: str,
                       round_: int, dense_accuracy: float | None, recorder: Recorder, started: float,
                       **extra):
  """Program: mask `keep` at full width, cut the channels out (`shrunk.Shrunk`), retrain and record it.

  `trainer` trained the full-width state `pruned`, taken at the pruning epoch extra["prune_epoch"].
  """
  cfg, config, test = exp.config.slimming, exp.config, exp.data["test"]
  name = f"{method}@{extra['prune_epoch']}"
  groups = [channel_groups(exp)[g] for g in keep]
  channel_masks = graph.channel_mask(pruned.variables, groups, list(keep.values()))["params"]
  masked = pruned.replace(params=masks_lib.apply(pruned.params, channel_masks), masks=channel_masks)
  before = trainer.evaluate(masked, test)["accuracy"]

  narrow = shrunk_model(exp, {g: int(k.sum()) for g, k in keep.items()})
  rebuilt = graph.narrow(pruned.variables, groups, list(keep.values()))
  epochs = cfg.retrain_epochs or config.train.epochs
  # "continue": the ResNet-20 seed's alternative; every branch then trains `epochs` in all, dense part included.
  start_epoch = extra["prune_epoch"] if cfg.retrain_from == "continue" else 0
  narrow_trainer = exp.trainer(epochs, model=narrow)
  start = narrow_trainer.init_state(rebuilt["params"], rebuilt.get("batch_stats", {}),
                                    masks_lib.init(rebuilt["params"]), exp.key(name), start_epoch)
  rebuilt_before = narrow_trainer.evaluate(start, test)["accuracy"]
  timing = _inference_times(exp, trainer.model, pruned.variables, narrow, rebuilt)
  if cfg.retrain_from == "init":
    fresh = jax.jit(narrow.init, static_argnames="train")(exp.key(f"reinit/{name}"), exp.inputs(test[0][:1]),
                                                          train=False)
    start = narrow_trainer.init_state(fresh["params"], fresh.get("batch_stats", {}), start.masks, exp.key(name))
  logging.info("%s: %d of %d channels kept; test accuracy masked %.4f, shrunk %.4f; retraining from %s",
               name, sum(int(k.sum()) for k in keep.values()), sum(k.size for k in keep.values()), before,
               rebuilt_before, cfg.retrain_from)

  state, history = yield from cohort.fit(narrow_trainer, start, epochs, name, exp.data)
  record = exp.record(state, history, method, round_, dense_accuracy, before, started, trainer=narrow_trainer)
  counts, channels = rebuilt_counts(exp, state), channel_counts(exp, state, keep)
  record = dataclasses.replace(record, **counts).with_extra(
      **channels, rebuilt_accuracy_before_retrain=rebuilt_before, retrain_from=cfg.retrain_from,
      retrain_start_epoch=start_epoch, criterion=cfg.criterion, scope=scope(config),
      full_width_model={"name": config.model.name, "num_classes": exp.num_classes, **exp.model_kwargs},
      **timing, **extra)
  recorder(record, state, start.params)
  return state


def shrunk_model(exp, kept: dict) -> shrunk.Shrunk:
  """exp.model with group g (a `channel_groups` name) narrowed to kept[g] channels; a group not named stays
  whole. A name the model has no group of, or a count outside [1, channels], is a UserError (a saved ticket's)."""
  groups = channel_groups(exp)
  unknown = sorted(set(kept) - set(groups))
  if unknown:
    raise UserError(f"config.model.name={exp.config.model.name!r} has no prunable channel group {unknown[0]!r}; "
                    f"its groups: {', '.join(groups)}")
  for g, n in kept.items():
    check(1 <= n <= groups[g].size, f"channel group {g!r} of config.model.name={exp.config.model.name!r} has "
          f"{groups[g].size} channels; {n} cannot be kept")
  return shrunk.Shrunk(shrunk.Network(exp.model), tuple(groups.values()),
                       tuple(int(kept.get(g, group.size)) for g, group in groups.items()))


def rebuilt_counts(exp, state: TrainState) -> dict:
  """The RunRecord fields sparsity, model_sparsity, params_remaining, params_total of a shrunk network
  `state` against exp's model at full width (see the module docstring); eval mode reports a ticket so too."""
  prunable = masks_lib.count(state.masks, exp.which)[1]
  prunable_dense = masks_lib.count(masks_lib.init(exp.init_params), exp.which)[1]
  params, params_dense = compression.count_params(state.params), compression.count_params(exp.init_params)
  return {"sparsity": 1.0 - prunable / prunable_dense, "model_sparsity": 1.0 - params / params_dense,
          "params_remaining": params, "params_total": params_dense}


def channel_counts(exp, state: TrainState, keep: dict) -> dict:
  """The structured fields of a shrunk network: its size and the channels `keep` kept, per group."""
  params, params_dense = compression.count_params(state.params), compression.count_params(exp.init_params)
  return {"structured_sparsity": 1.0 - params / params_dense,
          "channels_kept": sum(int(k.sum()) for k in keep.values()),
          "channels_total": sum(int(k.size) for k in keep.values()),
          "layer_channels": {g: [int(k.sum()), int(k.size)] for g, k in keep.items()}}


def _inference_times(exp, dense_model, dense_variables, narrow, narrow_variables) -> dict:
  """Median seconds per forward pass of the same test batch through both networks, on this device."""
  x = exp.inputs(exp.data["test"][0][:exp.config.train.batch_size])
  dense_s = compression.time_inference(_forward(dense_model), dense_variables, x)
  narrow_s = compression.time_inference(_forward(narrow), narrow_variables, x)
  return {"inference_time_s": narrow_s, "dense_inference_time_s": dense_s, "inference_speedup": dense_s / narrow_s,
          "inference_batch": int(x.shape[0])}


@functools.cache  # compiled once per network (modules compare by their fields)
def _forward(model):
  return jax.jit(functools.partial(model.apply, train=False))
