"""Killing a run at any moment and rerunning the same command gives the uninterrupted numbers bit for bit."""

import json

import numpy as np
import pytest

from tests.helpers import kill_main_py, last_ticket_arrays, main_py, numbers

ARGS = ["--config=configs/default.py", "--config.method=iterative", "--config.train.epochs=6",
        "--config.iterative.rounds=2", "--config.checkpoint.every=1", "--config.train.log_every=1",
        "--config.metrics.ood=('uniform_noise',)"]


def run(workdir, *extra):
  return main_py(*ARGS, f"--config.workdir={workdir}", *extra)


def run_and_kill(workdir, marker: str | None, delay: float = 0.0) -> None:
  kill_main_py(*ARGS, f"--config.workdir={workdir}", marker=marker, delay=delay)


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
  for a, b in zip(last_ticket_arrays(workdir), last_ticket_arrays(uninterrupted)):
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
  proc = main_py("--config=configs/default.py", "--config.mode=eval", f"--config.restore={ticket}",
                 f"--config.workdir={out}", "--config.metrics.ood=('uniform_noise',)")
  assert proc.returncode == 0, proc.stderr[-2000:]
  evaluated = json.loads((out / "results.json").read_text())["runs"][0]
  assert evaluated["method"] == "eval"
  for key in ("sparsity", "test_accuracy", "ece", "uce", "params_remaining"):
    assert evaluated[key] == pytest.approx(runs[-1][key], abs=1e-9), key
  weights = np.load(out / "ticket.npz")
  assert np.count_nonzero(weights["hidden_0/kernel"]) < weights["hidden_0/kernel"].size


def test_a_ticket_from_another_model_is_refused(uninterrupted, tmp_path):
  runs = json.loads((uninterrupted / "results.json").read_text())["runs"]
  proc = main_py("--config=configs/default.py", "--config.mode=eval", f"--config.restore={uninterrupted / runs[-1]['ticket']}",
                 f"--config.workdir={tmp_path}", "--config.model.widths=(32,)")
  assert proc.returncode == 2
  assert "does not fit config.model: hidden_0/bias is (128,) there and (32,) in the model" in proc.stderr


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
  proc = run(tmp_path, "--config.optimizer.lr=1e30")
  assert proc.returncode == 2
  assert "training loss is not finite at epoch" in proc.stderr and "Traceback" not in proc.stderr
