"""One run's figures: accuracy, sparsity and what pruning did beyond accuracy.

Beyond accuracy, on the test split: calibration (ECE/MCE/UCE/NLL/Brier, reliability-diagram data, and
the same after temperature scaling fitted on the validation split, None without one); OOD detection
against each set in `config.metrics.ood`; accuracy and ECE under each corruption and severity in
`config.metrics.corruptions` and on each labelled shifted set in `config.metrics.shifted` (e.g. the
released CIFAR-10-C through TFDS); and functional similarity to the dense network under uniform input noise
of each radius in `config.metrics.similarity_eps` (Lost in Pruning's eps-ball). The held-out sets are
built once per experiment; OOD, corruption and similarity figures use `config.metrics.max_examples` test
examples drawn at random, stratified by class, with config.seed (the same for every run of an experiment;
test splits are often sorted by class, so their head would be one or two classes). Both sides of every
OOD figure are float64 softmaxes: a float32 softmax saturates to exactly 1.0 once the top logit leads by
~16.6 (float64: ~36.7), which would rank OOD inputs above in-distribution ones with the same logits.
"""

import copy
import math

import jax
import ml_collections
import numpy as np

from lth_jax import data as data_lib
from lth_jax.data import pixels, tfds_source
from lth_jax.errors import UserError
from lth_jax.methods.record import RunRecord
from lth_jax.metrics import calibration
from lth_jax.metrics import compression
from lth_jax.metrics import corruptions
from lth_jax.metrics import ood
from lth_jax.metrics import similarity
from lth_jax.sparsity import masks as masks_lib
from lth_jax.training import streamed

SYNTHETIC_OOD = ("uniform_noise", "gaussian_noise", "far_points")
# How the best evaluation of a run is chosen: the highest validation accuracy, or the lowest validation
# loss (the Lottery Ticket paper's early-stopping criterion). Ties: the earliest.
BEST_BY = ("val_accuracy", "val_loss")


def match_shape(x: np.ndarray, shape: tuple) -> np.ndarray:
  """Images `x` (N,H,W,C) resampled (nearest neighbour) and channel-converted to `shape` (H',W',C').

  Grey to colour repeats the channel, colour to grey averages: how MNIST serves as OOD for CIFAR-10
  and the reverse.
  """
  if x.shape[1:] == tuple(shape):
    return x
  if x.ndim != 4 or len(shape) != 3:
    raise UserError(f"an OOD set of shape {x.shape[1:]} cannot stand in for inputs of shape {tuple(shape)}")
  h, w, c = shape
  rows = (np.arange(h) * x.shape[1] // h)
  cols = (np.arange(w) * x.shape[2] // w)
  x = x[:, rows][:, :, cols]
  if x.shape[-1] != c:
    x = x.mean(-1, keepdims=True) if c == 1 else np.repeat(x.mean(-1, keepdims=True), c, axis=-1)
  return x.astype(np.float32)


def _finite(values) -> list:
  """JSON has no NaN: empty reliability bins become null."""
  return [None if not math.isfinite(float(v)) else float(v) for v in values]


def _inputs(split):
  """What Trainer.logits reads a split's inputs from: a streamed split whole (its own reader), else its x."""
  return split if isinstance(split, streamed.HostSplit) else split[0]


def _probs(logits) -> np.ndarray:
  return calibration.softmax(np.asarray(logits, np.float64))


def stratified(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
  """Sorted indices of n examples drawn at random with `seed`, each class in proportion to its count.

  Within a class, examples are taken in a seeded random order; across classes, the k-th example of a
  class of size c comes at (k + 0.5) / c, so any n interleaves the classes evenly.
  """
  labels = np.asarray(labels)
  if n >= len(labels):
    return np.arange(len(labels))
  order = np.random.default_rng(seed).permutation(len(labels))
  y = labels[order]
  _, y, counts = np.unique(y, return_inverse=True, return_counts=True)
  by_class = np.argsort(y, kind="stable")
  rank = np.empty(len(y), np.int64)
  rank[by_class] = np.arange(len(y)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[y[by_class]]
  return np.sort(order[np.argsort((rank + 0.5) / counts[y], kind="stable")[:n]])


class Evaluator:
  """Builds the OOD, corrupted and perturbed sets once; `figures` evaluates one trained state."""

  def __init__(self, exp):
    self.exp = exp
    cfg = exp.config.metrics
    seed, total = exp.config.seed, len(exp.raw_test[1])
    n = min(cfg.max_examples or total, total)
    self.indices = stratified(exp.raw_test[1], n, seed)
    # to_float after indexing: a test split decoded on demand (lth_jax.data.lazy) decodes only these
    x_raw, self.labels = pixels.to_float(exp.raw_test[0][self.indices]), np.asarray(exp.raw_test[1])[self.indices]
    self.subset = {"examples": n, "of": total, "selection": "stratified random", "seed": seed}
    self.ood_sets = {entry: self._ood_inputs(entry, x_raw, seed) for entry in cfg.ood}
    for name in cfg.corruptions:
      if name not in corruptions.NAMES:
        raise UserError(f"config.metrics.corruptions holds {name!r}; allowed: {', '.join(corruptions.NAMES)}")
    for s in cfg.severities if cfg.corruptions else ():
      if not isinstance(s, int) or isinstance(s, bool) or s not in corruptions.SEVERITIES:
        raise UserError(f"config.metrics.severities holds {s!r}; allowed: {', '.join(map(str, corruptions.SEVERITIES))}")
    if not (isinstance(cfg.num_bins, int) and not isinstance(cfg.num_bins, bool) and cfg.num_bins >= 1):
      raise UserError(f"config.metrics.num_bins={cfg.num_bins!r} must be an integer >= 1")
    if cfg.corruptions and x_raw.ndim != 4:
      raise UserError("config.metrics.corruptions needs image data (N, H, W, C); set it to () for "
                      f"{exp.config.data.name!r}")
    self.corrupted = {(name, s): exp.normalize(corruptions.corrupt(name, x_raw, s, seed))
                      for name in cfg.corruptions for s in cfg.severities}
    self.shifted = {entry: self._shifted_set(entry, x_raw.shape[1:], n) for entry in cfg.shifted}
    x_model = exp.normalize(x_raw)
    rng = np.random.default_rng(seed)
    self.perturbed = {float(eps): (x_model + rng.uniform(-eps, eps, x_model.shape)).astype(np.float32)
                      for eps in cfg.similarity_eps}
    self.reference = None   # dense network's probabilities on the perturbed inputs

  def _ood_inputs(self, entry: str, x_raw: np.ndarray, seed: int) -> np.ndarray:
    exp = self.exp
    if entry == "uniform_noise":
      return exp.normalize(ood.uniform_noise_like(seed, x_raw))
    if entry == "gaussian_noise":
      return exp.normalize(ood.gaussian_noise_like(seed, x_raw))
    if entry == "far_points":
      x_train = np.asarray(exp.data["train"][0])
      if x_train.ndim != 2:
        raise UserError("config.metrics.ood 'far_points' is for tabular inputs (N, F), e.g. moons")
      return ood.far_points(seed, x_train, len(x_raw)).astype(np.float32)   # already model inputs
    name, _, directory = entry.partition(":")
    if name not in data_lib.names():
      raise UserError(f"config.metrics.ood holds {entry!r}; allowed: {', '.join(SYNTHETIC_OOD)} or a data set "
                      f"'NAME' / 'NAME:DIR' with NAME in {', '.join(data_lib.names())}")
    other = ml_collections.ConfigDict(exp.config.data.to_dict())
    other.name, other.subset = name, 0
    other.dir = directory or other.dir
    x, y = data_lib.load(other, seed).test
    x = pixels.to_float(x[stratified(y, len(x_raw), seed)])   # resampled as the floats in [0, 1] they stand for
    return exp.normalize(match_shape(x, x_raw.shape[1:]))

  def _shifted_set(self, entry: str, shape: tuple, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A labelled shifted test set: 'tfds:NAME' (e.g. the released CIFAR-10-C) or a data set 'NAME[:DIR]'."""
    exp = self.exp
    if entry.startswith("tfds:"):
      x, y = tfds_source.test_split(entry[len("tfds:"):], exp.config.data.tfds_dir)
    else:
      name, _, directory = entry.partition(":")
      if name not in data_lib.names():
        raise UserError(f"config.metrics.shifted holds {entry!r}; allowed: 'tfds:NAME' or a data set 'NAME' / "
                        f"'NAME:DIR' with NAME in {', '.join(data_lib.names())}")
      other = ml_collections.ConfigDict(exp.config.data.to_dict())
      other.name, other.subset, other.dir = name, 0, directory or other.dir
      x, y = data_lib.load(other, exp.config.seed).test
      x = pixels.to_float(x)   # resampled as the floats in [0, 1] they stand for
    if np.max(y) >= exp.num_classes:
      raise UserError(f"config.metrics.shifted {entry!r} has labels up to {int(np.max(y))}; the model has "
                      f"{exp.num_classes} classes")
    keep = stratified(y, n, exp.config.seed)
    return exp.normalize(match_shape(x[keep], shape)), np.asarray(y)[keep]

  def for_experiment(self, exp) -> "Evaluator":
    """This evaluator's held-out sets, for a replicate of its experiment (with no dense reference yet)."""
    other = copy.copy(self)
    other.exp, other.reference = exp, None
    return other

  def set_reference(self, trainer, state) -> None:
    """The dense network: similarity figures of later runs compare against it."""
    self.reference = {eps: _probs(trainer.logits(state, x)) for eps, x in self.perturbed.items()}

  def figures(self, trainer, state) -> dict:
    exp, cfg = self.exp, self.exp.config.metrics
    test_logits = np.asarray(trainer.logits(state, _inputs(exp.data["test"])), np.float64)
    labels = np.asarray(exp.data["test"][1])
    probs = calibration.softmax(test_logits)
    y_val = exp.data["val"][1]
    # Temperature scaling is fitted on the validation split; without one (data.val_fraction=0) it is absent.
    temperature = calibration.fit_temperature(np.asarray(trainer.logits(state, _inputs(exp.data["val"]))),
                                              np.asarray(y_val)) if y_val.shape[0] else None
    scaled = None if temperature is None else calibration.softmax(test_logits, temperature)
    rel = calibration.reliability(probs, labels, cfg.num_bins)
    out = {
        **calibration.summary(probs, labels, cfg.num_bins),
        "temperature": temperature,
        "ece_ts": None if scaled is None else calibration.ece(scaled, labels, cfg.num_bins),
        "nll_ts": None if scaled is None else calibration.nll(scaled, labels),
        "reliability": {"confidence": _finite(rel["confidence"]), "accuracy": _finite(rel["accuracy"]),
                        "count": [int(c) for c in rel["count"]]},
    }
    out["heldout_subset"] = dict(self.subset)
    if self.ood_sets:
      out["ood"] = {name: ood.summary(probs[self.indices], _probs(trainer.logits(state, x)))
                    for name, x in self.ood_sets.items()}
    if self.corrupted:
      table = {}
      for (name, severity), x in self.corrupted.items():
        p = _probs(trainer.logits(state, x))
        table.setdefault(name, {})[str(severity)] = {
            "accuracy": calibration.accuracy(p, self.labels), "ece": calibration.ece(p, self.labels, cfg.num_bins)}
      out["corruptions"] = table
      cells = [cell for by_severity in table.values() for cell in by_severity.values()]
      out["corruption_accuracy"] = float(np.mean([c["accuracy"] for c in cells]))
      out["corruption_ece"] = float(np.mean([c["ece"] for c in cells]))
    if self.shifted:
      out["shifted"] = {}
      for name, (x, y) in self.shifted.items():
        p = _probs(trainer.logits(state, x))
        out["shifted"][name] = {"accuracy": calibration.accuracy(p, y), "ece": calibration.ece(p, y, cfg.num_bins)}
    if self.reference is not None:
      out["similarity"] = {}
      for eps, x in self.perturbed.items():
        p, q = _probs(trainer.logits(state, x)), self.reference[eps]
        out["similarity"][f"{eps:g}"] = similarity.summary(p, q)
    return out


def best_evaluation(history: list, best_by: str, steps_per_epoch: int) -> dict | None:
  """The run's best evaluation by `best_by`: {step, epoch, val_accuracy, val_loss, test_accuracy}, or None.

  Args:
    history: Trainer.fit's rows; those with "evals" (train.eval_every_steps) are searched evaluation by
      evaluation, the others as one evaluation at the end of their epoch (global step epoch x steps_per_epoch).
    best_by: one of BEST_BY; the earliest evaluation wins a tie.
    steps_per_epoch: iterations per epoch, to place an epoch's evaluation and a step's epoch.

  Returns:
    The chosen evaluation, `epoch` being the (1-based) epoch holding its step; None when nothing was
    evaluated on a validation split.
  """
  points = []
  for row in history:
    if "evals" in row:
      points += row["evals"]
    else:
      points.append({"step": row["epoch"] * steps_per_epoch, **{k: row[k] for k in (
          "val_loss", "val_accuracy", "test_loss", "test_accuracy")}})
  points = [p for p in points if p[best_by] is not None]
  if not points:
    return None
  sign = -1 if best_by == "val_loss" else 1
  best = max(points, key=lambda p: sign * p[best_by])   # max returns the first of equal keys
  return {"step": best["step"], "epoch": -(-best["step"] // steps_per_epoch), "val_accuracy": best["val_accuracy"],
          "val_loss": best["val_loss"], "test_accuracy": best["test_accuracy"]}


def record(exp, state, history: list, method: str, round_: int, dense_accuracy: float | None,
           before: float | None, started: float, trainer=None) -> RunRecord:
  """One run's entry of results.json (DESIGN.md's fields; names are stable once written).

  `trainer` evaluates the state; pass the one that trained it when its model differs from exp.model
  (a network rebuilt narrower). `layer_sparsity` is {leaf: {"remaining", "total"}} per prunable leaf.
  Compression figures (params, nonzero_params, flops, nonzero_flops,
  compression_ratio, theoretical_speedup) compare with exp.model at full width.
  """
  trainer = trainer or exp.trainer(exp.config.train.epochs)
  figures = exp.evaluator.figures(trainer, state)
  remaining_all, total_all = masks_lib.count(state.masks, jax.tree.map(lambda _: True, state.masks))
  # a network rebuilt narrower keeps exp.model's leaf names, so exp.which still marks its prunable leaves
  same_leaves = jax.tree.structure(state.masks) == jax.tree.structure(exp.which)
  layer_sparsity = masks_lib.layer_counts(state.masks, exp.which if same_leaves else None)
  best = best_evaluation(history, exp.config.train.best_by, exp.steps_per_epoch)
  return RunRecord(
      method=method, round=round_,
      sparsity=masks_lib.sparsity(state.masks, exp.which),
      model_sparsity=masks_lib.model_sparsity(state.masks),
      params_remaining=remaining_all, params_total=total_all,
      test_accuracy=figures["accuracy"],
      accuracy_drop=None if dense_accuracy is None else dense_accuracy - figures["accuracy"],
      accuracy_before_retrain=before,
      best_epoch=best["epoch"] if best else None,
      best_step=best["step"] if best else None,
      best_val_accuracy=best["val_accuracy"] if best else None,
      best_val_loss=best["val_loss"] if best else None,
      test_accuracy_at_best_epoch=best["test_accuracy"] if best else None,
      epochs_trained=len(history),
      wall_time_s=exp.now() - started,
      curve=history,
      figures={**compression.figures(trainer.model, state.params, exp.data["train"][0].shape[1:], state.masks,
                                     exp.model, exp.init_params),
               "layer_sparsity": layer_sparsity,
               **{k: v for k, v in figures.items() if k != "accuracy"}})
