"""`prune_at_init`: prune theta_0 itself by a criterion, then train the masked network from theta_0.

The setting of SNIP (Lee et al. 2019), GraSP (Wang et al. 2020) and SynFlow (Tanaka et al. 2020), with
magnitude and random at initialization as the baselines of "Pruning Neural Networks at Initialization:
Why are We Missing the Mark?" (Frankle et al. 2021). The criterion is config.prune.criterion, scored at
theta_0 in `config.at_init.rounds` rescorings on the exponential schedule (SynFlow always takes
config.prune.synflow_iterations); config.prune.control's sanity check applies to the mask as for every
method. No dense training is needed: run alone, a run records no accuracy_drop; in `compare` it shares
the dense run's accuracy.
"""

import ml_collections

from lth_jax.errors import check
from lth_jax.methods import common
from lth_jax.methods.common import Ticket
from lth_jax.methods.registry import Recorder, register
from lth_jax.sparsity import masks as masks_lib

METHOD = "prune_at_init"


def validate(config: ml_collections.ConfigDict) -> None:
  common.validate_prune(config)
  check(config.at_init.rounds >= 1, f"config.at_init.rounds={config.at_init.rounds} must be >= 1")
  dynamic = config.method == "dynamic" or (config.method == "compare" and "dynamic" in config.compare.methods)
  check(not (dynamic and config.prune.control == "reinit"),
        "config.prune.control='reinit' cannot apply to the dynamic method, which never resets its weights; "
        "drop 'dynamic' from config.compare.methods or use none / shuffle / invert")


def ticket(exp, sparsity: float) -> Ticket:
  """theta_0 pruned to `sparsity` by the configured criterion (and control), ready to train."""
  started, epochs = exp.now(), exp.config.train.epochs
  name = f"{METHOD}@{sparsity:g}"
  params, stats = exp.init_params, exp.init_batch_stats
  masks = common.prune(exp, params, masks_lib.init(params), sparsity, name, iterations=exp.config.at_init.rounds)
  before = common.masked_accuracy(exp, params, stats, masks)
  params, stats = common.control_weights(exp, params, stats, name)
  trainer = exp.trainer(epochs)
  return Ticket(METHOD, name, trainer, trainer.init_state(params, stats, masks, exp.key(name)), epochs, params,
                before, started)


def sweep(exp, dense_run, sparsities, recorder: Recorder):
  """Program: a pruned-at-init network per sparsity, trained side by side (one program with train.vmap).

  `dense_run` (None when run alone) only gives the dense accuracy the drops are measured from."""
  dense_accuracy = None if dense_run is None else dense_run.test_accuracy
  tickets = [ticket(exp, s) for s in sparsities]
  fitted = yield from common.fit_tickets(exp, tickets)
  for t, (state, history) in zip(tickets, fitted):
    record = exp.record(state, history, METHOD, 1, dense_accuracy, t.before, t.started)
    recorder(common.with_control(exp, record).with_extra(criterion=exp.config.prune.criterion), state,
             t.rewind_params)
  return [state for state, _ in fitted]


@register(METHOD, validate=validate, sweep=sweep, planned=lambda exp: exp.config.train.epochs,
          sweep_planned=lambda exp, sparsities: len(sparsities) * exp.config.train.epochs)
def prune_at_init(exp, recorder: Recorder):
  yield from sweep(exp, None, [exp.config.prune.sparsity], recorder)
