"""`instability`: linear mode connectivity of the dense network and of a ticket (Frankle, Dziugaite, Roy,
Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis").

For each k in `config.stability.rewind_steps`, two copies start from the dense run's exact weights after
k iterations (their schedule resumes at k) and train to the end with different data orders and
augmentation (each copy its own key: different SGD noise, same everything else); then the test error is
evaluated at `config.stability.points` points of the straight line between their final weights, BatchNorm
statistics recomputed at each point on `config.stability.bn_examples` training examples. The same for a
ticket: the dense network magnitude-pruned (config.prune) to `config.prune.sparsity`, its copies trained
from the rewound weights under the mask. With train.vmap each pair trains as one vmapped program.
Each copy pair is one record (method "instability", round = k) holding `network` (dense | ticket),
`rewind_step`, the path's `alphas` and `error_curve`, and the `error_barrier`.

With `config.stability.imp_rounds` (e.g. (2, 5, 10, 15)) the tickets are the paper's IMP subnetworks
instead: for each k, iterative magnitude pruning with rewinding to k -- the trained dense network pruned by
config.iterative.rate of its remaining weights (config.prune's criterion, scope and layer scales), the
survivors rewound to the step-k weights and retrained to the end, pruned again, ... for max(imp_rounds)
rounds -- and the pair analysed at each listed round (its sparsity in the record, `imp_round` beside it).
Copy 0 of each round is that round's IMP training, whose weights the next round prunes; copy 1 trains
only at the listed rounds.
"""

import jax
import jax.numpy as jnp
import ml_collections

from lth_jax.errors import check
from lth_jax.methods import cohort
from lth_jax.methods import common
from lth_jax.methods.registry import Recorder, register
from lth_jax.metrics import connectivity
from lth_jax.sparsity import masks as masks_lib
from lth_jax.training import step

NETWORKS = ("dense", "ticket")


def validate(config: ml_collections.ConfigDict) -> None:
  s = config.stability
  steps = list(s.rewind_steps)
  check(len(steps) > 0 and steps[0] >= 0 and steps == sorted(set(steps)),
        f"config.stability.rewind_steps={tuple(s.rewind_steps)} must be increasing iteration counts >= 0")
  check(s.points >= 2, f"config.stability.points={s.points} must be >= 2 (the path's two ends)")
  check(s.bn_examples >= 1, f"config.stability.bn_examples={s.bn_examples} must be >= 1")
  rounds = list(s.imp_rounds)
  check(all(isinstance(r, int) and r >= 1 for r in rounds) and rounds == sorted(set(rounds)),
        f"config.stability.imp_rounds={tuple(s.imp_rounds)} must be increasing IMP rounds >= 1 "
        "(() = a one-shot ticket)")
  check(not rounds or 0.0 < config.iterative.rate < 1.0,
        f"config.stability.imp_rounds={tuple(s.imp_rounds)} prunes config.iterative.rate of the remaining weights "
        f"per round; set it in (0, 1) (it is {config.iterative.rate})")


def check_rewind_steps(exp) -> None:
  """Every rewind step lies inside the dense run."""
  total = exp.config.train.epochs * exp.steps_per_epoch
  for k in exp.config.stability.rewind_steps:
    check(k < total, f"config.stability.rewind_steps holds {k}: the dense run has only {total} iterations "
          f"(config.train.epochs={exp.config.train.epochs} x {exp.steps_per_epoch} steps per epoch)")


def recomputed_stats(exp, params, batch_stats):
  """BatchNorm statistics of `params` on the first bn_examples training examples (unchanged without BN).

  One training-mode pass from running averages of 0 and of 1 gives new = m * old + (1 - m) * batch for
  each; their difference is the momentum m, whatever the model sets it to, and so the batch's own mean
  and variance follow, with no running average mixed in."""
  if not batch_stats:
    return batch_stats
  recipe = exp.trainer(exp.config.train.epochs).recipe
  x = exp.data["train"][0][:exp.config.stability.bn_examples]
  def updated(fill):
    old = jax.tree.map(lambda a: jnp.full_like(a, fill), batch_stats)
    return step.apply_model(recipe, {"params": params, "batch_stats": old}, x, train=True)[1]
  from_zero, from_one = updated(0.0), updated(1.0)
  return jax.tree.map(lambda z, o: z / (1.0 - (o - z)), from_zero, from_one)


def path_errors(exp, trainer, state_a, state_b) -> list[float]:
  """Test error at each point of the line between the two states' weights (their shared mask applied)."""
  def error(params):
    stats = recomputed_stats(exp, params, state_a.batch_stats)
    return 1.0 - trainer.evaluate(state_a.replace(params=params, batch_stats=stats), exp.data["test"])["accuracy"]
  return connectivity.error_curve(error, state_a.params, state_b.params, exp.config.stability.points)


def dense_with_snapshots(exp, recorder: Recorder):
  """Program: the dense run, keeping (params, batch_stats) after exactly k iterations for every k."""
  started, epochs = exp.now(), exp.config.train.epochs
  trainer = exp.trainer(epochs)
  state = trainer.init_state(exp.init_params, exp.init_batch_stats, masks_lib.init(exp.init_params), exp.key("dense"))
  history, snapshots = [], {}
  check_rewind_steps(exp)
  for k in exp.config.stability.rewind_steps:
    epoch, within = divmod(k, trainer.steps_per_epoch)
    state, rows = yield from cohort.fit(trainer, state, epoch, "dense", exp.data)
    history += rows
    snapshot = trainer.advance(state, exp.data, within) if within else state
    snapshots[k] = (snapshot.params, snapshot.batch_stats)
  state, rows = yield from cohort.fit(trainer, state, epochs, "dense", exp.data)
  record = exp.record(state, history + rows, "dense", 0, None, None, started)
  recorder(record, state, exp.init_params)
  return state, snapshots, record.test_accuracy


def planned(exp) -> int:
  """The dense run, then from each rewind step to the end: two dense copies, and two copies of the one-shot
  ticket or, with imp_rounds, one IMP training per round and a second copy at each listed round."""
  epochs, s = exp.config.train.epochs, exp.config.stability
  tickets = (max(s.imp_rounds) + len(s.imp_rounds)) if s.imp_rounds else 2
  return epochs + sum((2 + tickets) * common.epochs_from(exp, epochs, k) for k in s.rewind_steps)


def analyse_pair(exp, trainer, network: str, k: int, params, results, dense_accuracy, started, recorder, **extra):
  """Record one copy pair: the test error along the line between the two copies and its barrier."""
  (a, history), (b, _) = results
  errors = path_errors(exp, trainer, a, b)
  record = exp.record(a, history, "instability", k, dense_accuracy, None, started).with_extra(
      network=network, rewind_step=k, alphas=[float(x) for x in connectivity.alphas(len(errors))],
      error_curve=errors, error_barrier=connectivity.barrier(errors), copy_test_errors=[errors[0], errors[-1]],
      **extra)
  recorder(record, a, params)


def imp_pairs(exp, recorder: Recorder, trainer, dense_state, k: int, params, stats, dense_accuracy: float):
  """Program: IMP with rewinding to step k from the trained dense network; a copy pair at each imp_round.

  An analysed round's record times the IMP rounds since the previous analysed one too (its ticket's lineage),
  so the records' wall times add up to the whole search. Under config.prune.pattern (n:m) each round keeps n
  of every m as its floor and the last analysed round exactly n of every m, as the iterative sweep's rounds
  (`common.pattern_fraction`)."""
  rate, rounds = exp.config.iterative.rate, exp.config.stability.imp_rounds
  wanted, last = set(rounds), max(rounds)
  state, masks = dense_state, masks_lib.init(dense_state.params)
  started = exp.now()
  for round_ in range(1, last + 1):
    name = f"instability/imp/k{k}/r{round_}"
    fraction = common.pattern_fraction(exp, masks, rate, last=round_ == last)
    masks = common.prune(exp, state.params, masks, fraction, name, state.batch_stats)
    copies = (0, 1) if round_ in wanted else (0,)
    starts = [common.start_state(trainer, params, stats, masks, exp.key(f"{name}/copy{i}"), k) for i in copies]
    results = yield [cohort.Job(trainer, s, exp.config.train.epochs, f"{name}/copy{i}", exp.data)
                     for i, s in zip(copies, starts)]
    state = results[0][0]
    if round_ in wanted:
      analyse_pair(exp, trainer, "ticket", k, params, results, dense_accuracy, started, recorder, imp_round=round_)
      started = exp.now()


@register("instability", validate=validate, planned=planned, ready=check_rewind_steps)
def instability(exp, recorder: Recorder):
  dense_state, snapshots, dense_accuracy = yield from dense_with_snapshots(exp, recorder)
  trainer, epochs = exp.trainer(exp.config.train.epochs), exp.config.train.epochs
  imp = bool(exp.config.stability.imp_rounds)
  ticket_masks = None if imp else common.prune(
      exp, dense_state.params, masks_lib.init(dense_state.params), exp.config.prune.sparsity, "instability/ticket",
      dense_state.batch_stats)
  for k, (params, stats) in snapshots.items():
    for network, masks in zip(NETWORKS, (masks_lib.init(params), ticket_masks)):
      if network == "ticket" and imp:
        yield from imp_pairs(exp, recorder, trainer, dense_state, k, params, stats, dense_accuracy)
        continue
      started, name = exp.now(), f"instability/{network}/k{k}"
      pair = [common.start_state(trainer, params, stats, masks, exp.key(f"{name}/copy{i}"), k) for i in (0, 1)]
      results = yield [cohort.Job(trainer, s, epochs, f"{name}/copy{i}", exp.data) for i, s in enumerate(pair)]
      analyse_pair(exp, trainer, network, k, params, results, dense_accuracy, started, recorder)
