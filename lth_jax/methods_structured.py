"""Structured pruning methods: network slimming and Early-Bird tickets, both ending in a narrower network.

Both train the full-width network from theta_0 with config.slimming.penalty * sum|gamma| over the prunable
BatchNorm scales added to the loss (with penalty 0 this is exactly `methods.dense`'s run: same trainer, same
key), choose whole channels to remove, copy the kept ones into a physically narrower model
(`structured.rebuild`) and retrain that network (config.slimming.retrain_from, retrain_epochs): from the kept
weights at epoch 0 of the retraining schedule ("pruned"), from a fresh initialisation ("init"), or from the kept
weights with the schedule continuing at the pruning epoch ("continue", the ResNet-20 seed's alternative: the
branch pruned at epoch e retrains retrain_epochs - e epochs, the same total training as the dense network).

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
model_kwargs (models.get's arguments for the rebuilt network, saved beside its ticket), retrain_from,
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
from absl import logging

from lth_jax import compression
from lth_jax import evaluation
from lth_jax import experiment
from lth_jax import masks as masks_lib
from lth_jax import models
from lth_jax import structured
from lth_jax.early_bird import EarlyBird
from lth_jax.experiment import Experiment
from lth_jax.methods import Recorder
from lth_jax.train import Trainer, TrainState

CRITERIA = {"bn_scale": structured.channel_masks, "l1_filter": structured.l1_filter_masks}


@functools.cache  # one compiled trainer per experiment and penalty: early_bird (and tests) reuse slimming's
def penalised_trainer(exp: Experiment, epochs: int, penalty: float) -> Trainer:
  """exp.trainer(epochs) with penalty * sum|gamma| over the prunable BN scales added to the loss."""
  trainer = exp.trainer(epochs)
  if not penalty:
    return trainer
  return dataclasses.replace(trainer, regularizer=functools.partial(_l1_penalty, penalty))


def _l1_penalty(penalty: float, params):
  return penalty * structured.slimming_penalty(params)


def _initial_state(exp: Experiment, trainer: Trainer) -> TrainState:
  # The dense run's key: with penalty 0 the full-width training is methods.dense's, epoch for epoch.
  return trainer.init_state(exp.init_params, exp.init_batch_stats, masks_lib.init(exp.init_params),
                            exp.key("dense"))


def slimming(exp: Experiment, recorder: Recorder) -> None:
  """Train with the L1 penalty; one branch per pruning epoch: prune channels, rebuild narrower, retrain."""
  started, cfg, epochs = time.time(), exp.config.slimming, exp.config.train.epochs
  trainer = penalised_trainer(exp, epochs, cfg.penalty)
  state, history, snapshots = _initial_state(exp, trainer), [], {}
  prune_at = tuple(cfg.epochs) or (epochs,)
  for stop in sorted({*prune_at, epochs}):
    state, rows = trainer.fit(state, exp.data, stop, "slimming dense", exp.config.train.log_every)
    history += rows
    if stop in prune_at:
      snapshots[stop] = state
  exp.evaluator.set_reference(trainer, state)
  dense = evaluation.record(exp, state, history, "dense", 0, None, None, started, trainer=trainer,
                            l1_penalty=cfg.penalty)
  dense["accuracy_drop"] = 0.0
  recorder(dense, state, exp.init_params)
  for round_, (epoch, pruned) in enumerate(snapshots.items(), 1):
    keep = CRITERIA[cfg.criterion](pruned.params, cfg.ratio, exp.config.model.name)
    _prune_and_retrain(exp, trainer, pruned, keep, "slimming", round_, dense["test_accuracy"], recorder,
                       time.time(), prune_epoch=epoch, criterion=cfg.criterion, ratio=cfg.ratio,
                       l1_penalty=cfg.penalty)


def early_bird(exp: Experiment, recorder: Recorder) -> None:
  """Train until the channel mask settles (or max_epochs), prune and rebuild there, retrain."""
  started, cfg, config = time.time(), exp.config.early_bird, exp.config
  trainer = penalised_trainer(exp, config.train.epochs, config.slimming.penalty)
  state, history = _initial_state(exp, trainer), []
  detector = EarlyBird(cfg.window, cfg.epsilon)
  for epoch in range(1, (cfg.max_epochs or config.train.epochs) + 1):
    state, rows = trainer.fit(state, exp.data, epoch, "early_bird search", config.train.log_every)
    history += rows
    keep = structured.channel_masks(state.params, cfg.ratio, config.model.name)
    if detector.update(keep):
      break
  detected = detector.ticket_epoch is not None
  logging.info("early_bird: %s at epoch %d", "ticket drawn" if detected else "no ticket; pruning", epoch)
  curve = [None if math.isnan(d) else d for d in detector.distances]  # JSON has no NaN
  _prune_and_retrain(exp, trainer, state, keep, "early_bird", 1, None, recorder, started, prune_epoch=epoch,
                     detected=detected, detection_epoch=epoch if detected else None, distance_curve=curve,
                     window=cfg.window, epsilon=cfg.epsilon, ratio=cfg.ratio, l1_penalty=config.slimming.penalty,
                     search_curve=history)


def _prune_and_retrain(exp: Experiment, trainer: Trainer, pruned: TrainState, keep: dict, method: str,
                       round_: int, dense_accuracy: float | None, recorder: Recorder, started: float,
                       **extra) -> TrainState:
  """Mask `keep` at full width, rebuild the narrower network, retrain it and record it.

  `trainer` trained the full-width state `pruned`, taken at the pruning epoch extra["prune_epoch"].
  """
  cfg, config, test = exp.config.slimming, exp.config, exp.data["test"]
  name = f"{method}@{extra['prune_epoch']}"
  channel_masks = structured.expand_channel_masks(pruned.params, keep)
  masked = pruned.replace(params=masks_lib.apply(pruned.params, channel_masks), masks=channel_masks)
  before = trainer.evaluate(masked, test)["accuracy"]

  widths, rebuilt = structured.rebuild(config.model.name, experiment.model_kwargs(config), pruned.variables, keep)
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

  state, history = narrow_trainer.fit(start, exp.data, epochs, name, config.train.log_every)
  record = evaluation.record(
      exp, state, history, method, round_, dense_accuracy, before, started, trainer=narrow_trainer,
      **_rebuilt_counts(exp, state, keep), rebuilt_accuracy_before_retrain=rebuilt_before,
      retrain_from=cfg.retrain_from, retrain_start_epoch=start_epoch,
      model_kwargs={"name": config.model.name, "num_classes": exp.num_classes, **widths},
      **timing, **extra)
  recorder(record, state, start.params)
  return state


def _rebuilt_counts(exp: Experiment, state: TrainState, keep: dict) -> dict:
  """Sparsity and size of a rebuilt network against the full-width one (see the module docstring)."""
  prunable = masks_lib.count(state.masks, exp.which)[1]
  prunable_dense = masks_lib.count(masks_lib.init(exp.init_params), exp.which)[1]
  params, params_dense = compression.count_params(state.params), compression.count_params(exp.init_params)
  return {"sparsity": 1.0 - prunable / prunable_dense, "model_sparsity": 1.0 - params / params_dense,
          "structured_sparsity": 1.0 - params / params_dense, "params_remaining": params,
          "params_total": params_dense, "channels_kept": sum(int(k.sum()) for k in keep.values()),
          "channels_total": sum(int(k.size) for k in keep.values()),
          "layer_channels": {bn: [int(k.sum()), int(k.size)] for bn, k in keep.items()}}


def _inference_times(exp: Experiment, dense_model, dense_variables, narrow, narrow_variables) -> dict:
  """Median seconds per forward pass of the same test batch through both networks, on this device."""
  x = exp.data["test"][0][:exp.config.train.batch_size]
  dense_s = compression.time_inference(_forward(dense_model), dense_variables, x)
  narrow_s = compression.time_inference(_forward(narrow), narrow_variables, x)
  return {"inference_time_s": narrow_s, "dense_inference_time_s": dense_s, "inference_speedup": dense_s / narrow_s,
          "inference_batch": int(x.shape[0])}


@functools.cache  # compiled once per network (modules compare by their fields)
def _forward(model):
  return jax.jit(functools.partial(model.apply, train=False))
