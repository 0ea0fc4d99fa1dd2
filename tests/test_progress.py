"""The experiment's one progress bar: its count is every epoch every run trained, its total the method's plan,
and off a terminal it writes nothing."""

import io
import json
import re
import sys

import pytest

from lth_jax import cli, methods
from lth_jax.methods import registry
from lth_jax.training import Progress
from tests.helpers import small_config

TINY = {"data.n_samples": 200, "model.widths": (8,), "train.epochs": 2, "finetune.epochs": 1, "metrics.ood": ()}
CASES = {
    # seeds trained together (vmapped) count once per state
    "dense": {"method": "dense", "replicates": 2, "train.vmap": True},
    # rewound inside an epoch, a shorter last round, a random control in round 2
    "iterative": {"method": "iterative", "iterative.rounds": 2, "iterative.reset": "rewind", "prune.rewind_step": 6,
                  "iterative.final_epochs": 3, "iterative.random_control_every": 2},
    "compare": {"method": "compare", "compare.sparsities": (0.5,), "iterative.rounds": 2, "train.vmap": True,
                "compare.methods": ("oneshot", "oneshot_reinit", "iterative", "dynamic")},
}


class FakeTerminal(io.StringIO):
  def isatty(self):
    return True


def final_count(text: str) -> tuple[int, int]:
  """(n, total) of the bar's last drawing."""
  n, total = re.findall(r"(\d+)/(\d+) \[", text)[-1]
  return int(n), int(total)


def trained_epochs(workdir) -> int:
  return sum(len(run["curve"]) for run in json.loads((workdir / "results.json").read_text())["runs"])


@pytest.mark.parametrize("case", CASES)
def test_the_bar_counts_every_epoch_trained_against_the_plan(case, tmp_path, monkeypatch):
  terminal = FakeTerminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  config = small_config(**TINY, **CASES[case], workdir=str(tmp_path))
  cli.run(config)
  epochs = trained_epochs(tmp_path)
  assert final_count(terminal.getvalue()) == (epochs, epochs)
  if case == "dense":   # a rerun restores every segment: the bar still ends at the whole count
    terminal.seek(0), terminal.truncate()
    cli.run(config)
    assert final_count(terminal.getvalue()) == (epochs, epochs)


def test_nothing_of_the_bar_off_a_terminal(tmp_path, monkeypatch):
  log = io.StringIO()   # a log file or CI: not a terminal
  monkeypatch.setattr(sys, "stderr", log)
  cli.run(small_config(**TINY, method="dense", workdir=str(tmp_path)))
  assert "epoch" not in log.getvalue() and "%|" not in log.getvalue()


def test_an_unknown_total_counts_without_one_and_off_is_off():
  terminal = FakeTerminal()
  with Progress(None, file=terminal) as bar:
    bar.advance(2, "early_bird search")
    bar.advance(1)
  assert re.search(r"early_bird search: 3epoch \[", terminal.getvalue()), terminal.getvalue()
  terminal = FakeTerminal()
  with Progress(5, enabled=False, file=terminal) as bar:
    bar.advance(5)
  assert terminal.getvalue() == ""


def test_every_method_plans_its_epochs_but_early_bird():
  # early_bird's search stops when its mask settles: it cannot know its total, and says so
  assert [name for name in methods.names() if methods.get(name).planned is None] == ["early_bird"]
  assert all(methods.get(name).sweep_planned is not None for name in registry.comparable())
