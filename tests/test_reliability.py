"""Bad input stops before anything trains or is written; one workdir serves one run at a time."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
SMALL = ["--config=configs/default.py", "--config.method=oneshot", "--config.data.name=moons",
         "--config.model.widths=(16,)", "--config.train.epochs=3", "--config.finetune.epochs=1",
         "--config.train.log_every=1", "--config.metrics.ood=('uniform_noise',)",
         "--config.metrics.similarity_eps=(0.1,)"]


def command(workdir, *extra):
  return [sys.executable, str(ROOT / "main.py"), *SMALL, f"--config.workdir={workdir}", *extra]


def run(workdir, *extra):
  return subprocess.run(command(workdir, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def numbers(workdir):
  runs = json.loads((workdir / "results.json").read_text())["runs"]
  return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in runs]


def one_line_error(proc, message: str) -> None:
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("lth_jax: error: ") and message in lines[-1], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return workdir


@pytest.mark.parametrize("bad, message", [
    ("--config.prune.scope=foo", "config.prune.scope='foo'; allowed: global, layerwise"),
    ("--config.metrics.ood=('foo',)", "config.metrics.ood holds 'foo'"),
    ("--config.metrics.corruptions=('foo',)", "config.metrics.corruptions holds 'foo'"),
    ("--config.optimizer.name=foo", "config.optimizer.name='foo' is not an optimizer"),
    ("--config.optimizer.schedule=foo", "config.optimizer.schedule='foo' is not a schedule"),
    ("--config.train.batch_size=100000", "config.train.batch_size=100000 must be in [1, "),
])
def test_bad_input_stops_before_training_and_the_corrected_command_runs(straight, tmp_path, bad, message):
  proc = run(tmp_path, bad)
  one_line_error(proc, message)
  assert "epoch" not in proc.stderr   # no progress line: nothing trained
  assert not (tmp_path / "config.json").exists()
  if "prune.scope" in bad:   # the corrected command on the same workdir is not refused
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert numbers(tmp_path) == numbers(straight)


def test_a_second_run_on_a_busy_workdir_is_refused_and_the_first_finishes(straight, tmp_path):
  # The first run is this test process holding the lock as the command line does (a real second run
  # would race the first to the end); the second is the command line itself.
  from lth_jax.training import resume
  with resume.lock(str(tmp_path)):
    second = run(tmp_path)
    one_line_error(second, f"config.workdir={str(tmp_path)!r} is in use by process {os.getpid()}")
    assert not (tmp_path / "config.json").exists()
  proc = run(tmp_path)   # the lock went with its holder
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert numbers(tmp_path) == numbers(straight)
