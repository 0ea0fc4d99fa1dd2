"""Methods by name. A method registers its per-seed program, its config check and, when it can join
`compare`, a sweep over sparsities from a shared dense run:

    @registry.register("my_method", validate=validate, sweep=my_sweep, planned=..., sweep_planned=...)
    def my_method(exp, recorder):        # a cohort program (lth_jax.methods.cohort)
      ...

`planned(exp)` and `sweep_planned(exp, sparsities)` give the epochs the program (the sweep, without the
shared dense run) will train, summed over its states: the experiment's progress bar's total. They read
the experiment, not only the config, because a ticket rewound to an iteration needs the steps per epoch.
A method that cannot know in advance leaves them out (or returns None) and the bar counts without a total.

Every registered check runs on every config before anything trains, so a bad value in any method's
section is refused at once, whichever method runs. `ready(exp)` checks what needs the data's size (a
step count beyond the run) for the methods that will run, also before anything trains or is written.
"""

import dataclasses
from typing import Any, Callable

import ml_collections

from lth_jax.errors import UserError

# (record, final state, the weights the state was reset to before training) -> None
Recorder = Callable[[Any, Any, Any], None]


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  run: Callable                        # (exp, recorder) -> program
  validate: Callable[[ml_collections.ConfigDict], None]
  sweep: Callable | None = None        # (exp, dense_run, sparsities, recorder) -> program; joins `compare`
  planned: Callable | None = None      # exp -> epochs `run` trains for one seed, or None: not known in advance
  sweep_planned: Callable | None = None   # (exp, sparsities) -> epochs `sweep` trains, or None
  ready: Callable | None = None        # exp -> None: the checks that need the data's size (steps per epoch)


_METHODS: dict[str, Method] = {}


def register(name: str, *, validate: Callable = lambda config: None, sweep: Callable | None = None,
             planned: Callable | None = None, sweep_planned: Callable | None = None, ready: Callable | None = None):
  def add(run: Callable) -> Callable:
    if name in _METHODS:
      raise ValueError(f"method {name!r} is already registered")
    _METHODS[name] = Method(name, run, validate, sweep, planned, sweep_planned, ready)
    return run
  return add


def names() -> tuple[str, ...]:
  return tuple(_METHODS)


def comparable() -> tuple[str, ...]:
  """The methods `compare` can run from its shared dense network."""
  return tuple(name for name, method in _METHODS.items() if method.sweep is not None)


def get(name: str) -> Method:
  if name not in _METHODS:
    raise UserError(f"config.method={name!r} is not a method; allowed: {', '.join(_METHODS)}")
  return _METHODS[name]


def validate(config: ml_collections.ConfigDict) -> None:
  """The method exists, and every method's section of `config` is valid."""
  get(config.method)
  seen = set()
  for method in _METHODS.values():
    if method.validate not in seen:   # one check can serve several names (the one-shot family)
      seen.add(method.validate)
      method.validate(config)


def check_sizes(exp) -> None:
  """The `ready` checks of the methods config.method runs (compare: and those it compares), once the data
  are loaded: a value beyond the run's length is refused before anything trains or is written."""
  config = exp.config
  for name in (config.method, *(config.compare.methods if config.method == "compare" else ())):
    if get(name).ready is not None:
      get(name).ready(exp)


def planned_epochs(experiments: list) -> int | None:
  """Epochs config.method will train over all `experiments` (one per seed), or None when it cannot say."""
  planned = get(experiments[0].config.method).planned   # every seed runs the same method
  counts = [planned(exp) if planned else None for exp in experiments]
  return None if any(c is None for c in counts) else sum(counts)


def sweep_epochs(name: str, exp, sparsities) -> int | None:
  """Epochs method `name`'s sweep over `sparsities` will train (not the dense run it starts from), or None."""
  method = get(name)
  return method.sweep_planned(exp, sparsities) if method.sweep_planned else None
