"""Killing a run at any moment and rerunning the same command gives the uninterrupted numbers bit for bit."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/default.py", "--config.method=iterative", "--config.train.epochs=6",
        "--config.iterative.rounds=2", "--config.checkpoint.every=1", "--config.train.log_every=1",
        "--config.metrics.ood=('uniform_noise',)"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def command(workdir, *extra):
  return [sys.executable, str(ROOT / "main.py"), *ARGS, f"--config.workdir={workdir}", *extra]


def run(workdir, *extra):
  return subprocess.run(command(workdir, *extra), cwd=ROOT, env=ENV, capture_output=True, text=True)


def run_and_kill(workdir, marker: str | None, delay: float = 0.0) -> None:
  """Start the command, SIGKILL it `delay` seconds after `marker` shows in its log (or after `delay`)."""
  proc = subprocess.Popen(command(workdir), cwd=ROOT, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          text=True)
  if marker is None:
    time.sleep(delay)
  else:
    for line in proc.stderr:
      if marker in line:
        time.sleep(delay)
        break
  threading.Thread(target=proc.stderr.read, daemon=True).start()   # keep the pipe drained
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)


def numbers(workdir):
  doc = json.loads((workdir / "results.json").read_text())
  runs = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in doc["runs"]]
  return doc["complete"], runs


def final_masks(workdir):
  from lth_jax.training import checkpoint
  runs = json.loads((workdir / "results.json").read_text())["runs"]
  ticket = checkpoint.load_ticket(str(workdir / runs[-1]["ticket"]))
  return [np.asarray(x) for x in __import__("jax").tree.leaves((ticket["masks"], ticket["params"]))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return workdir


def test_killed_at_several_points_resumes_to_identical_numbers(uninterrupted, tmp_path):
  workdir = tmp_path / "killed"
  run_and_kill(workdir, "dense epoch 2/6")                   # mid-training of the first segment
  run_and_kill(workdir, "iterative        round 1", 0.0)     # right at a round boundary
  run_and_kill(workdir, "iterative round 2 epoch 3/6", 0.05)  # around a checkpoint save
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "resumed at epoch" in proc.stderr
  assert numbers(workdir) == numbers(uninterrupted)
  for a, b in zip(final_masks(workdir), final_masks(uninterrupted)):
    assert np.array_equal(a, b)


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path):
  workdir = tmp_path / "corrupt"
  run_and_kill(workdir, "iterative round 1 epoch 4/6", 0.0)
  segment = workdir / "checkpoints" / "iterative_round_1_0-6"
  newest = max((p for p in segment.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
  for f in newest.rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "ocdbt" in str(f):
      f.write_bytes(b"\0" * 7)
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "is corrupted (its files do not match the checksum" in proc.stderr and "using the one before it" in proc.stderr
  assert numbers(workdir) == numbers(uninterrupted)


def test_a_different_config_is_refused_and_restart_starts_over(uninterrupted, tmp_path):
  proc = run(uninterrupted, "--config.optimizer.lr=0.01")
  assert proc.returncode == 2
  assert "holds a run of a different config (optimizer.lr: 0.05 -> 0.01)" in proc.stderr
  assert "--config.checkpoint.restart=True" in proc.stderr
  workdir = tmp_path / "restart"
  assert run(workdir).returncode == 0
  proc = run(workdir, "--config.optimizer.lr=0.01", "--config.checkpoint.restart=True")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads((workdir / "results.json").read_text())["config"]["optimizer"]["lr"] == 0.01


def test_eval_mode_reloads_a_ticket_and_exports_npz(uninterrupted, tmp_path):
  runs = json.loads((uninterrupted / "results.json").read_text())["runs"]
  ticket = uninterrupted / runs[-1]["ticket"]
  out = tmp_path / "eval"
  proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config=configs/default.py", "--config.mode=eval",
                         f"--config.restore={ticket}", f"--config.workdir={out}",
                         "--config.metrics.ood=('uniform_noise',)"], cwd=ROOT, env=ENV, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  evaluated = json.loads((out / "results.json").read_text())["runs"][0]
  assert evaluated["method"] == "eval"
  for key in ("sparsity", "test_accuracy", "ece", "uce", "params_remaining"):
    assert evaluated[key] == pytest.approx(runs[-1][key], abs=1e-9), key
  weights = np.load(out / "ticket.npz")
  assert np.count_nonzero(weights["hidden_0/kernel"]) < weights["hidden_0/kernel"].size


def test_a_ticket_from_another_model_is_refused(uninterrupted, tmp_path):
  runs = json.loads((uninterrupted / "results.json").read_text())["runs"]
  proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config=configs/default.py", "--config.mode=eval",
                         f"--config.restore={uninterrupted / runs[-1]['ticket']}", f"--config.workdir={tmp_path}",
                         "--config.model.widths=(32,)"], cwd=ROOT, env=ENV, capture_output=True, text=True)
  assert proc.returncode == 2
  assert "does not fit config.model: hidden_0/bias is (128,) there and (32,) in the model" in proc.stderr


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
  proc = run(tmp_path, "--config.optimizer.lr=1e30")
  assert proc.returncode == 2
  assert "training loss is not finite at epoch" in proc.stderr and "Traceback" not in proc.stderr
