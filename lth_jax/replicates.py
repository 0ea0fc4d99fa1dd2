"""Replicate runs: config.method under seeds config.seed, config.seed + 1, ..., + config.replicates - 1.

Replicate i is the whole run of the method on `Experiment.replicate(i)`: its own theta_0, data order and
pruning keys, the experiment's data split and held-out evaluation sets. Its training segments are named
`seed{seed}/...`, so checkpoints (and resuming) keep the replicates apart.

Without config.train.vmap the replicates run one after another. With it they run in lockstep: each
replicate's method runs in a thread of its own, and its Trainer.fit / fit_many calls wait at a rendezvous
until every replicate still running has asked to train. Requests for the same trainer over the same epochs
then train as one vmapped program (Trainer.train_states), any others one after another. The methods do not
know: they call fit as always, and each replicate's numbers equal its sequential run's to float tolerance.
"""

import functools
import threading

from lth_jax import methods
from lth_jax import train


def run(exp, recorders: list) -> None:
  """config.method for replicates 0 .. len(recorders) - 1 of `exp`; recorders[i] records replicate i."""
  if len(recorders) == 1:
    methods.run(exp, recorders[0])
    return
  replicas = [exp.replicate(i) for i in range(len(recorders))]
  if not exp.config.train.vmap:
    for replica, recorder in zip(replicas, recorders):
      _run_routed(functools.partial(_train_alone, replica.seed), replica, recorder)
    return
  lockstep = _Lockstep(len(replicas))
  threads = [threading.Thread(target=lockstep.run_member, args=(i, replica, recorder), daemon=True,
                              name=f"replicate-{replica.seed}")
             for i, (replica, recorder) in enumerate(zip(replicas, recorders))]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  if lockstep.error is not None:
    raise lockstep.error


def _segment_names(seed: int, names: list) -> list:
  return [f"seed{seed}/{name}" for name in names]


def _run_routed(router, replica, recorder) -> None:
  token = train.FIT_ROUTER.set(router)
  try:
    methods.run(replica, recorder)
  finally:
    train.FIT_ROUTER.reset(token)


def _train_alone(seed, trainer, states, data, end_epoch, names, log_every):
  return trainer.train_states(states, data, end_epoch, _segment_names(seed, names), log_every)


class _Aborted(Exception):
  """Raised in the replicates still waiting once another one has failed."""


class _Lockstep:
  """The rendezvous. Training runs in whichever thread completes the set of requests, under the lock:
  at that moment every other live replicate is waiting in `fit`, so nothing else runs meanwhile."""

  def __init__(self, n: int):
    self._cond = threading.Condition()
    self._live = n
    self._requests = {}   # member -> (trainer, states, data, end_epoch, names, log_every)
    self._results = {}    # member -> (states, histories)
    self.error = None     # the first failure of any replicate

  def run_member(self, member: int, replica, recorder) -> None:
    try:
      _run_routed(functools.partial(self.fit, member, replica.seed), replica, recorder)
    except _Aborted:
      pass
    except BaseException as e:  # noqa: BLE001 -- handed to the main thread, which raises it
      with self._cond:
        self.error = self.error or e
    finally:
      with self._cond:
        self._live -= 1
        self._serve()
        self._cond.notify_all()

  def fit(self, member: int, seed: int, trainer, states, data, end_epoch, names, log_every):
    with self._cond:
      self._requests[member] = (trainer, states, data, end_epoch, _segment_names(seed, names), log_every)
      self._serve()
      while member not in self._results:
        if self.error is not None:
          raise _Aborted()
        self._cond.wait()
      return self._results.pop(member)

  def _serve(self) -> None:
    """Train every request once each live replicate has one (called with the lock held)."""
    if not self._requests or len(self._requests) < self._live or self.error is not None:
      return
    requests, self._requests = self._requests, {}
    try:
      self._results.update(_train_together(requests))
    except BaseException as e:  # noqa: BLE001 -- every waiting replicate aborts; the main thread raises it
      self.error = self.error or e
    self._cond.notify_all()


def _train_together(requests: dict) -> dict:
  """Requests that share a trainer, data and start and end epochs train in one Trainer.train_states call."""
  groups = {}
  for member in sorted(requests):
    trainer, states, data, end_epoch, _, _ = requests[member]
    start_epoch = int(states[0].step) // trainer.steps_per_epoch
    groups.setdefault((id(trainer), id(data), start_epoch, end_epoch), []).append(member)
  results = {}
  for members in groups.values():
    trainer, _, data, end_epoch, _, log_every = requests[members[0]]
    states = [state for m in members for state in requests[m][1]]
    names = [name for m in members for name in requests[m][4]]
    trained, histories = trainer.train_states(states, data, end_epoch, names, log_every)
    for m in members:
      k = len(requests[m][1])
      results[m], trained, histories = (trained[:k], histories[:k]), trained[k:], histories[k:]
  return results
