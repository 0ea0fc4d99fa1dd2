"""Pruning during training and sparse training from scratch: `gradual` (Zhu & Gupta 2017), `static` (a
fixed random sparse mask), `set` (Mocanu et al. 2018) and `rigl` (Evci et al. 2020).

Every run trains from theta_0 for config.train.epochs. The masks change inside the compiled train step
(a `mask_update` hook of the trainer, under lax.cond on the step), so there is no host round trip per
update, and everything an update depends on -- step, masks, weights, optimizer state, rng -- lives in
the TrainState: a run resumed from a checkpoint is the uninterrupted run. The per-layer split is
config.prune.distribution ("scope" reads prune.scope: global -> one threshold, layerwise -> uniform).
The hooks are frozen dataclasses, so equal hooks share a trainer and, with train.vmap, the seeds of
`replicates` train as one program (and so do set/rigl/static runs of different sparsities).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from lth_jax.errors import UserError, check
from lth_jax.methods import cohort
from lth_jax.methods import common
from lth_jax.methods.common import DenseRun
from lth_jax.methods.registry import Recorder, register
from lth_jax.sparsity import criteria, during_training, pruning, select
from lth_jax.sparsity import distribution as distribution_lib
from lth_jax.sparsity import masks as masks_lib
from lth_jax.sparsity import nm

GROW = {"set": "random", "rigl": "gradient"}


def validate(config: ml_collections.ConfigDict) -> None:
  g, s = config.gradual, config.sparse
  check(0.0 <= g.start < g.end <= 1.0, f"config.gradual.start={g.start} and end={g.end} must satisfy 0 <= start < end <= 1")
  check(g.every >= 1, f"config.gradual.every={g.every} must be >= 1 (steps)")
  check(0.0 <= g.initial_sparsity <= config.prune.sparsity,
        f"config.gradual.initial_sparsity={g.initial_sparsity} must be in [0, config.prune.sparsity]")
  check(s.every >= 1, f"config.sparse.every={s.every} must be >= 1 (steps)")
  check(0.0 <= s.drop_fraction <= 1.0, f"config.sparse.drop_fraction={s.drop_fraction} must be in [0, 1]")
  check(0.0 < s.end <= 1.0, f"config.sparse.end={s.end} must be in (0, 1] (a fraction of training)")


def _which_tree(masks, which: tuple):
  return jax.tree.unflatten(jax.tree.structure(masks), list(which))


@dataclasses.dataclass(frozen=True)
class Gradual:
  """Mask update: at t0 + k dt (k = 0..n) keep the largest |w| to the counts of the cubic schedule."""
  t0: int
  every: int
  n: int
  counts: tuple          # per event: one count (global) or a tuple of per-layer counts
  which: tuple           # prunable flag per leaf
  pattern: nm.NM | None = None   # N:M: every event keeps n of every m as its floor, the last exactly that

  def __call__(self, state, dense_grads, tx):
    t = state.step
    event = jnp.clip((t - self.t0) // self.every, 0, self.n)

    def prune(state):
      counts = jnp.asarray(self.counts, jnp.int32)[event]
      masks = select.keep_counts(jax.tree.map(jnp.abs, state.params), state.masks, counts,
                                 _which_tree(state.masks, self.which), self.pattern)
      return state.replace(masks=masks, params=masks_lib.apply(state.params, masks))
    on = during_training.is_update(t, self.every, self.t0, self.t0 + self.n * self.every)
    return jax.lax.cond(on, prune, lambda s: s, state)


@dataclasses.dataclass(frozen=True)
class DropAndGrow:
  """Mask update every dt steps until t_end: drop the floor(fraction x alive) smallest |w| of each layer,
  grow as many where the grow score is largest (SET: random; RigL: the step's dense |gradient|). As in
  rigl's code, a connection grown where none was starts at zero with zeroed moments, one dropped and
  grown back keeps its weight and moments; RigL's update replaces that iteration's optimizer step
  (`replaces_step`: rigl's SparseRigLOptimizer applies either the mask update or the gradients), SET's
  follows it (rigl's SparseSETOptimizer applies the gradients, then updates the mask)."""
  grow: str              # "random" | "gradient"
  every: int
  drop_fraction: float
  t_end: int
  which: tuple

  def _on(self, t):
    return during_training.is_update(t, self.every, 0, self.t_end - 1)

  def replaces_step(self, t):
    """Whether the iteration that brings the step count to `t` updates the mask instead of stepping the
    optimizer (step.train_step then hands this hook the weights and optimizer state it started from)."""
    return self._on(t) if self.grow == "gradient" else jnp.asarray(False)

  def __call__(self, state, dense_grads, tx):
    t = state.step

    def update(state):
      if self.grow == "gradient":
        scores = jax.tree.map(jnp.abs, dense_grads)
      else:   # a key of its own: the training stream (state.rng) is left as it is
        key = jax.random.fold_in(state.rng, 0x5E7)
        leaves, treedef = jax.tree.flatten(state.params)
        keys = jax.random.split(key, len(leaves))
        scores = jax.tree.unflatten(treedef, [jax.random.uniform(k, p.shape) for k, p in zip(keys, leaves)])
      fraction = during_training.cosine_drop(t, self.drop_fraction, self.t_end)
      masks, grown = during_training.drop_and_grow(state.params, state.masks, scores, fraction,
                                                   _which_tree(state.masks, self.which))
      fresh = jax.tree.map(lambda p, g: jnp.where(g != 0, jnp.zeros_like(p), p), state.params, grown)
      return state.replace(masks=masks, params=masks_lib.apply(fresh, masks),
                           opt_state=during_training.reset_moments(tx, state.opt_state, grown))
    return jax.lax.cond(self._on(t), update, lambda s: s, state)


def total_steps(exp) -> int:
  """The iterations a run trains: config.train.steps when set (the last epoch is cut short there), else whole epochs."""
  return exp.config.train.steps or exp.steps_per_epoch * exp.config.train.epochs


def gradual_steps(exp) -> tuple[int, int]:
  """(t0, n) of Zhu & Gupta's schedule: the first pruning step and how many follow it, every gradual.every."""
  g, total = exp.config.gradual, total_steps(exp)
  t0 = max(1, round(g.start * total))
  n = (round(g.end * total) - t0) // g.every
  if n < 1:
    raise UserError(f"config.gradual: no pruning step fits between start={g.start} and end={g.end} of "
                    f"{total} training steps every {g.every}; lower config.gradual.every")
  return t0, n


def gradual_hook(exp, sparsity: float) -> Gradual:
  g = exp.config.gradual
  t0, n = gradual_steps(exp)
  masks = masks_lib.init(exp.init_params)
  _, n_total = masks_lib.count(masks, exp.which)
  layer_map = distribution_lib.parse_map(exp.config.prune.layer_sparsity)
  counts = []
  for k in range(n + 1):
    s = float(during_training.polynomial_sparsity(t0 + k * g.every, g.initial_sparsity, sparsity, t0, n, g.every))
    c = pruning.target_counts(masks, exp.which, common.distribution_kind(exp.config), round((1.0 - s) * n_total), layer_map)
    counts.append(tuple(c) if isinstance(c, list) else c)
  return Gradual(t0, g.every, n, tuple(counts), tuple(jax.tree.leaves(exp.which)),
                 common.prune_pattern(exp.config))


def random_masks(exp, sparsity: float, purpose: str):
  """A random mask at `sparsity` with config.prune.distribution's per-layer counts (exact); under
  config.prune.pattern a random n of every m."""
  masks = masks_lib.init(exp.init_params)
  _, n_total = masks_lib.count(masks, exp.which)
  scores = criteria.get("random")(masks, masks, criteria.Context(key=exp.key(f"mask/{purpose}")))
  counts = pruning.target_counts(masks, exp.which, common.distribution_kind(exp.config),
                                 round((1.0 - sparsity) * n_total), distribution_lib.parse_map(exp.config.prune.layer_sparsity))
  return select.keep_counts(scores, masks, counts, exp.which, common.prune_pattern(exp.config))


def sparse_run(exp, method: str, sparsity: float, recorder: Recorder, dense_accuracy: float | None = None):
  """Program: one training run of `method` at `sparsity` from theta_0."""
  started, epochs, s = exp.now(), exp.config.train.epochs, exp.config.sparse
  name = f"{method}@{sparsity:g}"
  which = tuple(jax.tree.leaves(exp.which))
  extra = {"distribution": common.distribution_kind(exp.config)}
  if method == "gradual":
    masks, hook = masks_lib.init(exp.init_params), gradual_hook(exp, sparsity)
    extra.update(prune_steps=[hook.t0 + k * hook.every for k in range(hook.n + 1)])
  else:
    masks = random_masks(exp, sparsity, name)
    hook = None if method == "static" else DropAndGrow(GROW[method], s.every, s.drop_fraction,
                                                       round(s.end * total_steps(exp)), which)
    if hook is not None:
      extra.update(update_every=s.every, drop_fraction=s.drop_fraction, t_end=hook.t_end)
  trainer = exp.trainer(epochs, mask_update=hook)
  initial = masks
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks, exp.key(name))
  state, history = yield from cohort.fit(trainer, state, epochs, name, exp.data)
  record = exp.record(state, history, method, 1, dense_accuracy, None, started)
  extra.update(train_steps=int(state.step), mask_changed=masks_lib.hamming(initial, state.masks, exp.which))
  recorder(record.with_extra(**extra), state, exp.init_params)
  return state


def _register(method: str) -> None:
  def sweep(exp, dense_run: DenseRun, sparsities, recorder: Recorder):
    return (yield from cohort.together(sparse_run(exp, method, s, recorder, dense_run.test_accuracy)
                                       for s in sparsities))

  def run(exp, recorder: Recorder):
    yield from sparse_run(exp, method, exp.config.prune.sparsity, recorder)
  register(method, validate=validate, sweep=sweep, planned=lambda exp: exp.config.train.epochs,
           sweep_planned=lambda exp, sparsities: len(sparsities) * exp.config.train.epochs,
           ready=gradual_steps if method == "gradual" else None)(run)


for _method in ("gradual", "static", "set", "rigl"):
  _register(_method)
