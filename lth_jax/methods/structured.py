"""Structured pruning methods: network slimming and Early-Bird tickets, both ending in a narrower network.

Both train the full-width network from theta_0 with config.slimming.penalty * sum|gamma| over the prunable
BatchNorm scales added to the loss (with penalty 0 this is exactly `methods.dense`'s run: same trainer, same
key), choose whole channels to remove on the channel groups read from the model's traced program
(`channel_groups`; scored by `sparsity.group_criteria`, masked by `graph.channel_mask`), copy the kept ones
into a physically narrower model (`structured.rebuild`) and retrain that network (config.slimming.retrain_from,
retrain_epochs): from the kept weights at epoch 0 of the retraining schedule ("pruned"), from a fresh
initialisation ("init"), or from the kept weights with the schedule continuing at the pruning epoch
("continue", the ResNet-20 seed's alternative: the branch pruned at epoch e retrains retrain_epochs - e
epochs, the same total training as the dense network).

- `slimming` (Liu et al. 2017): the trained full-width network is recorded as method "dense" (with its
  `l1_penalty`); then one branch per epoch in config.slimming.epochs (default: the last) prunes the weights of
  that epoch by config.slimming.criterion -- one global |gamma| threshold, or Li et al.'s per-layer filter L1
  norm -- and is recorded as method "slimming", round = branch number (1, 2, ...).
- `early_bird` (You et al. 2020): after every epoch, the |gamma| channel mask for config.early_bird.ratio goes
  to `EarlyBird`; the network is pruned at the first epoch whose mask is within epsilon of the last `window`
  ones, or at max_epochs (`detected: false`). One record, method "early_bird", round 1; no full dense run.

A pruned record holds evaluation.record's fields, where for the rebuilt network (which has no zero masks):
  sparsity            1 - its prunable weights / the full-width network's (the leaves exp.which marks, so
                      config.prune.exclude applies), comparable with the unstructured methods' sparsity;
  structured_sparsity 1 - all its parameters / the full-width network's (= model_sparsity here);
  params_remaining, params_total: its parameters, the full-width network's;
  params ... theoretical_speedup: compression.figures against the full-width network;
and: prune_epoch, channels_kept, channels_total, layer_channels {bn: [kept, total]}, accuracy_before_retrain
(the full-width network at the pruning epoch with the channels masked to zero) and
rebuilt_accuracy_before_retrain (the rebuilt network before retraining: the same function, so the same value),
model_kwargs (models.get's arguments for the rebuilt network, saved beside its ticket), full_width_model (the
same for the network it was cut from, saved there too: eval mode reports against it), retrain_from,
retrain_start_epoch (the schedule's epoch where retraining starts: the pruning epoch for "continue", else 0),
inference_time_s and dense_inference_time_s (median forward pass over a test batch of config.train.batch_size
examples, rebuilt and full-width network on the same device), inference_speedup (their ratio), ratio,
l1_penalty; slimming adds criterion; early_bird adds detected, detection_epoch (1-based, None when not
detected), distance_curve (per epoch from 1, the largest distance to the previous `window` masks; None before
there are `window` of them), window, epsilon and search_curve (the search run's per-epoch history).
"""

import dataclasses
import functools
import math
import time

import jax
import ml_collections
from absl import logging

from lth_jax import models
from lth_jax.errors import check
from lth_jax.methods import cohort
from lth_jax.methods import common
from lth_jax.methods.registry import Recorder, register
from lth_jax.metrics import compression
from lth_jax.sparsity import graph, group_criteria, structured
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity.early_bird import EarlyBird
from lth_jax.training import Trainer, TrainState

# config.slimming.criterion -> (group criterion, scope): Liu et al.'s one global |gamma| threshold, Li et al.'s
# per-layer L1 of each conv's own filters
CRITERIA = {"bn_scale": ("bn_scale", "global"), "l1_filter": ("l1_filter", "layerwise")}
STRUCTURED = ("slimming", "early_bird")
RETRAIN_FROM = ("pruned", "init", "continue")


def validate(config: ml_collections.ConfigDict) -> None:
  """config.slimming and config.early_bird; their epochs only where the method that reads them runs."""
  s, eb, epochs = config.slimming, config.early_bird, config.train.epochs
  if config.method in STRUCTURED:
    check(config.model.name in structured.REBUILDABLE, f"config.method={config.method!r} rebuilds the model "
          f"narrower; config.model.name={config.model.name!r} cannot be; allowed: {', '.join(structured.REBUILDABLE)}")
  check(s.penalty >= 0, f"config.slimming.penalty={s.penalty} must be >= 0")
  check(0.0 < s.ratio < 1.0, f"config.slimming.ratio={s.ratio} must be in (0, 1)")
  # Epochs are checked against train.epochs only where they are used: a config shared by several methods
  # (configs/cifar_resnet_slimming.py with --config.method=early_bird) may shorten training.
  check(config.method != "slimming" or (all(isinstance(e, int) and 1 <= e <= epochs for e in s.epochs)
                                        and list(s.epochs) == sorted(set(s.epochs))),
        f"config.slimming.epochs={tuple(s.epochs)} must be increasing epochs in [1, config.train.epochs={epochs}]")
  check(s.criterion in CRITERIA, f"config.slimming.criterion={s.criterion!r}; allowed: {', '.join(CRITERIA)}")
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


def penalised_trainer(exp, epochs: int, penalty: float) -> Trainer:
  """exp.trainer(epochs) with penalty * sum|gamma| over the prunable BN scales added to the loss.

  One compiled trainer per experiment family and penalty: early_bird (and tests) reuse slimming's.
  """
  trainer = exp.trainer(epochs)
  if not penalty:
    return trainer
  return exp.cached(("penalised", epochs, penalty),
                    lambda: dataclasses.replace(trainer, regularizer=functools.partial(_l1_penalty, penalty)))


def _l1_penalty(penalty: float, params):
  return penalty * structured.slimming_penalty(params)


def channel_groups(exp) -> dict[str, graph.Group]:
  """{BatchNorm path: its channel group} read from the model's program, traced once per experiment family.

  Only the groups `structured.rebuild` can build narrower: those whose one BatchNorm is a prunable one
  (the residual streams, which tie several, stay whole).
  """
  def trace():
    fn = lambda variables, x: exp.model.apply(variables, x, train=False)
    variables = {"params": exp.init_params, "batch_stats": exp.init_batch_stats}
    groups = graph.channel_groups(fn, variables, exp.inputs(exp.data["train"][0][:1]))
    prunable = set(structured.prunable_bns(exp.init_params))
    out = {}
    for g in groups:
      bns = {s.leaf.removeprefix("params/").removesuffix("/scale") for s in g.slices if s.leaf.endswith("/scale")}
      if len(bns) == 1 and bns <= prunable:
        out[bns.pop()] = g
    return out
  return exp.cached(("channel_groups",), trace)


def channel_keep(exp, variables, ratio: float, criterion: str) -> dict:
  """{BatchNorm path: bool keep-array} at `ratio` by config.slimming.criterion, chosen on the traced groups."""
  groups = channel_groups(exp)
  keep = group_criteria.channel_keep(variables, list(groups.values()), ratio, *CRITERIA[criterion])
  return dict(zip(groups, keep))


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
@register("slimming", validate=validate, planned=slimming_epochs)
def slimming(exp, recorder: Recorder):
  """Train with the L1 penalty; one branch per pruning epoch: prune channels, rebuild narrower, retrain."""
  started, cfg, epochs = time.time(), exp.config.slimming, exp.config.train.epochs
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
    keep = channel_keep(exp, pruned.variables, cfg.ratio, cfg.criterion)
    yield from _prune_and_retrain(exp, trainer, pruned, keep, "slimming", round_, dense.test_accuracy, recorder,
                       time.time(), prune_epoch=epoch, pruned_from_epoch=weights_epoch, criterion=cfg.criterion,
                       ratio=cfg.ratio, l1_penalty=cfg.penalty)


@register("early_bird", validate=validate)
def early_bird(exp, recorder: Recorder):
  """Train until the channel mask settles (or max_epochs), prune and rebuild there, retrain."""
  started, cfg, config = time.time(), exp.config.early_bird, exp.config
  trainer = penalised_trainer(exp, config.train.epochs, config.slimming.penalty)
  state, history = _initial_state(exp, trainer), []
  detector = EarlyBird(cfg.window, cfg.epsilon)
  for epoch in range(1, (cfg.max_epochs or config.train.epochs) + 1):
    state, rows = yield from cohort.fit(trainer, state, epoch, "early_bird search", exp.data)
    history += rows
    keep = channel_keep(exp, state.variables, cfg.ratio, "bn_scale")
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
  """Program: mask `keep` at full width, rebuild the narrower network, retrain it and record it.

  `trainer` trained the full-width state `pruned`, taken at the pruning epoch extra["prune_epoch"].
  """
  cfg, config, test = exp.config.slimming, exp.config, exp.data["test"]
  name = f"{method}@{extra['prune_epoch']}"
  groups = channel_groups(exp)
  channel_masks = graph.channel_mask(pruned.variables, [groups[bn] for bn in keep], list(keep.values()))["params"]
  masked = pruned.replace(params=masks_lib.apply(pruned.params, channel_masks), masks=channel_masks)
  before = trainer.evaluate(masked, test)["accuracy"]

  widths, rebuilt = structured.rebuild(config.model.name, exp.model_kwargs, pruned.variables, keep)
  narrow = models.get(config.model.name, num_classes=exp.num_classes, **widths)
  epochs = cfg.retrain_epochs or config.train.epochs
  # "continue": the ResNet-20 seed's alternative; every branch then trains `epochs` in all, dense part included.
  start_epoch = extra["prune_epoch"] if cfg.retrain_from == "continue" else 0
  narrow_trainer = exp.trainer(epochs, model=narrow)
  start = narrow_trainer.init_state(rebuilt["params"], rebuilt["batch_stats"], masks_lib.init(rebuilt["params"]),
                                    exp.key(name), start_epoch)
  rebuilt_before = narrow_trainer.evaluate(start, test)["accuracy"]
  timing = _inference_times(exp, trainer.model, pruned.variables, narrow, rebuilt)
  if cfg.retrain_from == "init":
    fresh = jax.jit(narrow.init, static_argnames="train")(exp.key(f"reinit/{name}"), test[0][:1], train=False)
    start = narrow_trainer.init_state(fresh["params"], fresh["batch_stats"], start.masks, exp.key(name))
  logging.info("%s: %d of %d channels kept; test accuracy masked %.4f, rebuilt %.4f; retraining from %s",
               name, sum(int(k.sum()) for k in keep.values()), sum(k.size for k in keep.values()), before,
               rebuilt_before, cfg.retrain_from)

  state, history = yield from cohort.fit(narrow_trainer, start, epochs, name, exp.data)
  record = exp.record(state, history, method, round_, dense_accuracy, before, started, trainer=narrow_trainer)
  counts, channels = rebuilt_counts(exp, state), channel_counts(exp, state, keep)
  record = dataclasses.replace(record, **counts).with_extra(
      **channels, rebuilt_accuracy_before_retrain=rebuilt_before, retrain_from=cfg.retrain_from,
      retrain_start_epoch=start_epoch, model_kwargs={"name": config.model.name, "num_classes": exp.num_classes,
                                                     **widths},
      full_width_model={"name": config.model.name, "num_classes": exp.num_classes,
                        **exp.model_kwargs},
      **timing, **extra)
  recorder(record, state, start.params)
  return state


def rebuilt_counts(exp, state: TrainState) -> dict:
  """The RunRecord fields sparsity, model_sparsity, params_remaining, params_total of a rebuilt network
  `state` against exp's model at full width (see the module docstring); eval mode reports a ticket so too."""
  prunable = masks_lib.count(state.masks, exp.which)[1]
  prunable_dense = masks_lib.count(masks_lib.init(exp.init_params), exp.which)[1]
  params, params_dense = compression.count_params(state.params), compression.count_params(exp.init_params)
  return {"sparsity": 1.0 - prunable / prunable_dense, "model_sparsity": 1.0 - params / params_dense,
          "params_remaining": params, "params_total": params_dense}


def channel_counts(exp, state: TrainState, keep: dict) -> dict:
  """The structured fields of a rebuilt network: its size and the channels `keep` kept, per layer."""
  params, params_dense = compression.count_params(state.params), compression.count_params(exp.init_params)
  return {"structured_sparsity": 1.0 - params / params_dense,
          "channels_kept": sum(int(k.sum()) for k in keep.values()),
          "channels_total": sum(int(k.size) for k in keep.values()),
          "layer_channels": {bn: [int(k.sum()), int(k.size)] for bn, k in keep.items()}}


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
