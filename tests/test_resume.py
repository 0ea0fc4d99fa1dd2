"""Killing a run at any moment and rerunning the same command gives the uninterrupted numbers bit for bit."""

import json
import shutil
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.helpers import checkpoint_saved, kill_main_py, last_ticket_arrays, main_py, numbers, resumed_at
from tests.helpers import slow

ARGS = ["--config=configs/default.py", "--config.method=iterative", "--config.train.epochs=6",
        "--config.iterative.rounds=2", "--config.checkpoint.every=1", "--config.train.log_every=1",
        "--config.metrics.ood=('uniform_noise',)"]


def run(workdir, *extra):
  return main_py(*ARGS, f"--config.workdir={workdir}", *extra)


def run_and_kill(workdir, until) -> str:
  """The same command, SIGKILLed once `until` holds (see helpers.kill_main_py); its log."""
  return kill_main_py(*ARGS, f"--config.workdir={workdir}", until=until)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return workdir


@slow
def test_killed_at_several_points_resumes_to_identical_numbers(uninterrupted, tmp_path):
  workdir = tmp_path / "killed"
  # mid-training of the first segment, once its epoch-2 checkpoint is complete
  run_and_kill(workdir, checkpoint_saved(workdir, "dense/0-6", 2))
  # at the round boundary: round 1's ticket and results are written, round 2 not begun
  log = run_and_kill(workdir, "round 1  sparsity")   # the log line of round 1's record
  assert resumed_at(log)["dense"] >= 2
  # around round 2's epoch-3 checkpoint save (its log line comes just before it)
  log = run_and_kill(workdir, "iterative round 2 epoch 3/6")
  assert resumed_at(log)["dense"] == resumed_at(log)["iterative round 1"] == 6   # finished: replayed
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert resumed_at(proc.stderr)["iterative round 2"] >= 2   # epoch 2's save finished before epoch 3 began
  assert numbers(workdir) == numbers(uninterrupted)
  for a, b in zip(last_ticket_arrays(workdir), last_ticket_arrays(uninterrupted)):
    assert np.array_equal(a, b)


@slow
def test_a_corrupted_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path):
  workdir = tmp_path / "corrupt"
  run_and_kill(workdir, checkpoint_saved(workdir, "iterative round 1/0-6", 4))
  segment = workdir / "checkpoints" / "iterative_round_1_0-6"
  # the newest checkpoint with its checksum (the kill may land between a save and its checksum)
  newest = max((p for p in segment.iterdir() if p.name.isdigit() and (segment / f"{p.name}.sha256").exists()),
               key=lambda p: int(p.name))
  for f in newest.rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "ocdbt" in str(f):
      f.write_bytes(b"\0" * 7)
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "is corrupted (its files do not match the checksum" in proc.stderr and "using the one before it" in proc.stderr
  assert numbers(workdir) == numbers(uninterrupted)


@slow
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


def saved_training_seconds(workdir) -> float:
  """The training seconds every segment's newest checkpoint keeps, summed (read with Orbax alone)."""
  total = 0.0
  for segment in (Path(workdir) / "checkpoints").iterdir():
    manager = ocp.CheckpointManager(str(segment))
    total += manager.restore(manager.latest_step(), args=ocp.args.Composite(history=ocp.args.JsonRestore()))[
        "history"]["seconds"]
    manager.close()
  return total


def test_a_run_read_back_from_its_checkpoints_keeps_the_time_its_training_took(uninterrupted, tmp_path):
  """Rerunning a finished command reads every segment back: its wall times count that training at the seconds
  the checkpoints kept, not the seconds the read-back took (what a study's total time is summed from)."""
  workdir = tmp_path / "again"
  shutil.copytree(uninterrupted, workdir)
  trained = saved_training_seconds(workdir)
  first = json.loads((workdir / "results.json").read_text())
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  again = json.loads((workdir / "results.json").read_text())
  assert trained > 0 and first["restored_s"] == 0
  assert again["restored_s"] == pytest.approx(trained, rel=1e-9)   # every segment read back, at its seconds
  assert first["wall_time_s"] >= trained and again["wall_time_s"] >= trained
  assert sum(r["wall_time_s"] for r in again["runs"]) >= trained
  assert numbers(workdir) == numbers(uninterrupted)


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
