"""`compare`: one dense run shared by several methods and sparsities, for one table.

The sweeps of `compare.methods` run side by side from the shared dense network (`cohort.together`):
with train.vmap the tickets of every sweep that share a schedule train as one program (oneshot_reinit
and oneshot_random at every sparsity, iterative's first round beside them). Runs are recorded in the
order the methods are listed, whatever order they finish in.
"""

import ml_collections

from lth_jax.errors import check
from lth_jax.methods import cohort
from lth_jax.methods import common
from lth_jax.methods import registry
from lth_jax.methods.registry import Recorder


def validate(config: ml_collections.ConfigDict) -> None:
  for s in config.compare.sparsities:
    check(0.0 <= s < 1.0, f"config.compare.sparsities holds {s}; each must be in [0, 1)")
  check(config.method != "compare" or len(config.compare.sparsities) > 0,
        "config.compare.sparsities is empty; list at least one sparsity, e.g. (0.5, 0.8)")
  comparable = registry.comparable()
  check(config.method != "compare" or len(config.compare.methods) > 0,
        f"config.compare.methods is empty (compare would run only dense); list some of: {', '.join(comparable)}")
  for m in config.compare.methods:
    check(m in comparable, f"config.compare.methods holds {m!r}; allowed: {', '.join(comparable)}")


class _InOrder:
  """Recorders for several programs whose records are passed on in program order."""

  def __init__(self, n: int, recorder: Recorder):
    self._recorder, self._held, self._done, self._next = recorder, [[] for _ in range(n)], [False] * n, 0

  def recorder(self, i: int) -> Recorder:
    return lambda *run: (self._held[i].append(run), self._release())

  def done(self, i: int, _) -> None:
    self._done[i] = True
    self._release()

  def _release(self) -> None:
    while self._next < len(self._held):
      for run in self._held[self._next]:
        self._recorder(*run)
      self._held[self._next] = []
      if not self._done[self._next]:
        return
      self._next += 1


def planned(exp) -> int | None:
  """The shared dense run and every method's sweep; None when one of them cannot say."""
  sparsities = list(exp.config.compare.sparsities)
  sweeps = [registry.sweep_epochs(name, exp, sparsities) for name in exp.config.compare.methods]
  return None if None in sweeps else exp.config.train.epochs + sum(sweeps)


@registry.register("compare", validate=validate, planned=planned)
def compare(exp, recorder: Recorder):
  dense_run = yield from common.dense(exp, recorder)
  names, sparsities = list(exp.config.compare.methods), list(exp.config.compare.sparsities)
  ordered = _InOrder(len(names), recorder)
  sweeps = [registry.get(name).sweep(exp, dense_run, sparsities, ordered.recorder(i)) for i, name in enumerate(names)]
  yield from cohort.together(sweeps, on_done=ordered.done)
