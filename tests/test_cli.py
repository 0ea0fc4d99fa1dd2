"""The command line end to end, in subprocesses: outputs, determinism, ticket reloading; user errors (in process)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import command_run, slow

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
SMALL = ["--config.train.epochs=2", "--config.finetune.epochs=1", "--config.iterative.rounds=2",
         "--config.compare.sparsities=(0.5,0.9)", "--config.train.log_every=1"]


def run(*args, cwd=ROOT):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=env,
                        capture_output=True, text=True)


@pytest.fixture(scope="module")
def iterative_run(tmp_path_factory):
  workdirs = [tmp_path_factory.mktemp(f"run{i}") for i in range(2)]
  procs = [run("--config=configs/default.py", "--config.method=iterative", f"--config.workdir={w}", *SMALL)
           for w in workdirs]
  return workdirs, procs


def test_iterative_writes_every_output(iterative_run):
  (workdir, _), (proc, _) = iterative_run
  assert proc.returncode == 0, proc.stderr[-2000:]
  for name in ("results.json", "results.md", "accuracy_vs_sparsity.png", "curves.png"):
    assert (workdir / name).stat().st_size > 0
  doc = json.loads((workdir / "results.json").read_text())
  assert doc["complete"] is True and doc["config"]["method"] == "iterative"
  assert set(doc["environment"]) >= {"jax", "devices", "git"}
  assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?|unknown", doc["environment"]["git"])
  runs = doc["runs"]
  assert [(r["method"], r["round"]) for r in runs] == [("dense", 0), ("iterative", 1), ("iterative", 2)]
  for field in ("sparsity", "test_accuracy", "accuracy_drop", "accuracy_before_retrain", "best_epoch",
                "params_remaining", "ece", "uce", "curve"):
    assert field in runs[1]
  assert runs[2]["sparsity"] == pytest.approx(0.8, abs=1e-3)
  assert len(runs[1]["curve"]) == 2
  assert "| iterative | 2 |" in (workdir / "results.md").read_text()
  assert "epoch 2/2" in proc.stderr   # progress lines


def test_same_command_twice_gives_identical_numbers(iterative_run):
  workdirs, _ = iterative_run
  strip = lambda doc: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in doc["runs"]]
  a, b = (json.loads((w / "results.json").read_text()) for w in workdirs)
  assert strip(a) == strip(b)


def test_tickets_reload_with_their_masks_and_rewind_weights(iterative_run):
  (workdir, _), _ = iterative_run
  from lth_jax import masks
  from lth_jax.training import checkpoint
  doc = json.loads((workdir / "results.json").read_text())
  last = doc["runs"][-1]
  ticket = checkpoint.load_ticket(str(workdir / last["ticket"]))
  assert set(ticket) == {"params", "batch_stats", "masks", "rewind_params"}
  assert masks.sparsity(ticket["masks"]) == pytest.approx(last["sparsity"])
  for p, m in zip(*(sorted(masks.named_leaves(ticket[k])) for k in ("params", "masks"))):
    assert np.all(np.asarray(p[1])[np.asarray(m[1]) == 0] == 0)
  out = workdir / "ticket.npz"
  checkpoint.export_npz(str(out), ticket["params"], ticket["masks"])
  assert set(np.load(out).files) == {name for name, _ in masks.named_leaves(ticket["params"])}


@pytest.mark.parametrize("args, message", [
    (["--config.method=bogus"], "config.method='bogus' is not a method; allowed: dense"),
    (["--config.model.name=bogus"], "config.model.name='bogus' is not a model; allowed:"),
    (["--config.data.name=bogus"], "config.data.name='bogus' is not a data set; allowed:"),
    (["--config.prune.sparsity=1.0"], "config.prune.sparsity=1.0 must be in [0, 1)"),
    (["--config.prune.sparsity=-0.1"], "config.prune.sparsity=-0.1 must be in [0, 1)"),
    (["--config.iterative.rounds=0"], "config.iterative.rounds=0 must be >= 1"),
    (["--config.iterative.reset=bogus"], "config.iterative.reset='bogus'; allowed: init, rewind, none"),
    (["--config.data.name=mnist", "--config.data.dir=/nonexistent/mnist"], "/nonexistent/mnist"),
    (["--config.nosuchkey=1"], "config.nosuchkey is not a config key"),
    (["--config.prune.nosuchkey=1"], "config.prune.nosuchkey is not a config key; keys at this level:"),
    (["--config=configs/nosuchfile.py"], "no such config file"),
    (["--config.train.epochs=abc"], "config.train.epochs"),
    (["--config.optimizer.name=rmsprop"], "config.optimizer.name='rmsprop' is not an optimizer"),
    (["--config.model.widths=(8,)", "--config.model.name=lenet300_100"], "does not apply to model 'lenet300_100'"),
])
def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys, args, message):
  # main.py's flags and run in this process (the real process is test_census's command lines and
  # test_reliability's); stderr is only what the command line itself printed
  status, err = command_run(["main.py", f"--config.workdir={tmp_path / 'w'}", *args], capsys)
  assert status == 2, err[-2000:]
  lines = [line for line in err.splitlines() if line.startswith("lth_jax: error:")]
  assert len(lines) == 1 and message in lines[0], err[-2000:]
  assert "Traceback" not in err
  assert not (tmp_path / "w" / "config.json").exists() and not (tmp_path / "w" / "results.json").exists()


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  proc = run(f"--config.workdir={blocker / 'sub'}", "--config.method=dense", "--config.train.epochs=1")
  assert proc.returncode == 2 and "is not writable" in proc.stderr


@pytest.mark.skipif(not MNIST.is_dir(), reason="../shared/data/mnist is absent")
@slow
def test_mnist_lenet_config_runs_scaled_down(tmp_path):
  proc = run("--config=configs/mnist_lenet.py", f"--config.data.dir={MNIST}", "--config.data.subset=3000",
             "--config.train.steps=0", "--config.train.epochs=1", "--config.iterative.rounds=1",
             "--config.iterative.random_control_every=1",
             f"--config.workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  runs = json.loads((tmp_path / "results.json").read_text())["runs"]
  assert [r["method"] for r in runs] == ["dense", "iterative", "iterative_random"]
  assert runs[1]["test_accuracy"] > 0.8


def test_report_rerenders_from_results_json(iterative_run, tmp_path):
  """python -m lth_jax.report WORKDIR rebuilds results.md and plots from results.json alone."""
  import shutil
  (workdir, _), _ = iterative_run
  copy = tmp_path / "copy"
  copy.mkdir()
  shutil.copy(workdir / "results.json", copy / "results.json")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  proc = subprocess.run([sys.executable, "-m", "lth_jax.report", str(copy)], env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (copy / "results.md").read_text() == (workdir / "results.md").read_text()
  assert (copy / "accuracy_vs_sparsity.png").stat().st_size > 0
  runs = json.loads((workdir / "results.json").read_text())["runs"]
  row = f"| iterative | 2 | {runs[2]['params']:,} | {runs[2]['nonzero_params']:,} |"
  assert "## Compression" in proc.stdout + (copy / "results.md").read_text() and row in (copy / "results.md").read_text()
  doc = json.loads((copy / "results.json").read_text())
  doc["complete"] = False
  (copy / "results.json").write_text(json.dumps(doc))
  proc = subprocess.run([sys.executable, "-m", "lth_jax.report", str(copy)], env=env, capture_output=True, text=True)
  assert proc.returncode == 2 and "not complete" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
