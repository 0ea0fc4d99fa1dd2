"""Seeds and tickets as one cohort: methods say what to train, `run` decides what trains together.

A method is written for one seed as a *program*: a generator that yields a list of `Job`s (states to
train) whenever it needs training, and receives one (state, history) per job back:

    (state, history), = yield [Job(trainer, state, end_epoch, "dense", exp.data)]
    state, history = yield from fit(trainer, state, end_epoch, "dense", exp.data)   # the same

`run` advances the programs of every seed in lock step, without threads: each round it collects the
jobs every live program has yielded, in seed order, trains them and sends each program its results.
With `vmap`, the jobs that share a trainer (one model, optimizer and schedule), data, start step and end
epoch train as one vmapped `Trainer.fit` call -- the seeds of `replicates`, the sparsities of a sweep,
the reinit and random tickets of `compare`; without it every job trains alone. Either way the
grouping is a function of the programs alone, never of timing, and each job's numbers are those of
training it alone (to float tolerance when vmapped): keys are per purpose, not per order.
`together` runs several programs of one seed the same way, as one program.
"""

import dataclasses
from typing import Any, Callable, Generator, Iterable

from lth_jax.training import Trainer, TrainState

Program = Generator[list, list, Any]


@dataclasses.dataclass
class Job:
  """Train `state` with `trainer` on `data` until the global epoch `end_epoch`, as segment `name`."""
  trainer: Trainer
  state: TrainState
  end_epoch: int
  name: str
  data: dict

  def start_step(self) -> int:
    return int(self.state.step)   # a ticket rewound inside an epoch trains apart from one at its start


def fit(trainer: Trainer, state: TrainState, end_epoch: int, name: str, data: dict) -> Program:
  """One job: `state, history = yield from fit(...)`."""
  (result,) = yield [Job(trainer, state, end_epoch, name, data)]
  return result


def together(programs: Iterable[Program], on_done: Callable[[int, Any], None] | None = None,
             prefixes: list[str] | None = None) -> Program:
  """Several programs as one: every step yields the jobs of all live programs, in their order.

  Returns the programs' return values in order; `on_done(i, value)` is called as program i finishes.
  `prefixes[i]` goes before the segment name of every job of program i (a seed's checkpoints stay its own).
  """
  programs = list(programs)
  prefixes = prefixes or [""] * len(programs)
  results, pending = [None] * len(programs), {}

  def advance(i: int, sent) -> None:
    try:
      pending[i] = programs[i].send(sent)
    except StopIteration as stop:
      results[i] = stop.value
      if on_done is not None:
        on_done(i, stop.value)

  for i in range(len(programs)):
    advance(i, None)
  while pending:
    asked, pending = pending, {}
    order = sorted(asked)
    outcomes = yield [dataclasses.replace(job, name=prefixes[i] + job.name) for i in order for job in asked[i]]
    for i in order:
      mine, outcomes = outcomes[:len(asked[i])], outcomes[len(asked[i]):]
      advance(i, mine)
  return results


def groups(jobs: list[Job], vmap: bool) -> list[list[int]]:
  """Indices of the jobs that train together, in order of first appearance."""
  if not vmap:
    return [[i] for i in range(len(jobs))]
  by_key = {}
  for i, job in enumerate(jobs):
    by_key.setdefault((id(job.trainer), id(job.data), job.start_step(), job.end_epoch), []).append(i)
  return list(by_key.values())


def train(jobs: list[Job], vmap: bool, log_every: int = 0, progress=None) -> list:
  """(state, history) per job, the groups of `groups` each trained by one Trainer.fit call (each advancing
  `progress`, the experiment's bar, when given)."""
  results = [None] * len(jobs)
  for members in groups(jobs, vmap):
    first = jobs[members[0]]
    states, histories = first.trainer.fit([jobs[i].state for i in members], first.data, first.end_epoch,
                                          [jobs[i].name for i in members], log_every, progress)
    for i, state, history in zip(members, states, histories):
      results[i] = (state, history)
  return results


def run(programs: Iterable[Program], vmap: bool, log_every: int = 0, progress=None,
        prefixes: list[str] | None = None) -> list:
  """Drive the programs to their end, training what they ask for; their return values in order."""
  program = together(programs, prefixes=prefixes)
  sent = None
  while True:
    try:
      jobs = program.send(sent)
    except StopIteration as stop:
      return stop.value
    sent = train(jobs, vmap, log_every, progress)
