"""TensorBoard event files, read back with TensorBoard's own EventAccumulator: a run's curves as results.json has them."""

import json
import struct
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator

from lth_jax.training import tensorboard
from tests.helpers import main_py

MOONS = ["--config=configs/default.py", "--config.data.name=moons", "--config.model.widths=(8,)"]


def read_scalars(directory) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] of every scalar in the event files of `directory`, as TensorBoard loads them."""
  accumulator = event_accumulator.EventAccumulator(str(directory))
  accumulator.Reload()
  return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}


def as_float32(x: float) -> float:
  return struct.unpack("<f", struct.pack("<f", x))[0]   # simple_value is a float32


def test_a_curve_round_trips_and_none_values_are_left_out(tmp_path):
  curve = [{"epoch": 1, "train_loss": 0.5, "val_loss": None, "lr": 0.1, "sparsity": 0.0},
           {"epoch": 2, "train_loss": 0.25, "val_loss": 0.75, "lr": 0.1, "sparsity": 0.0}]
  tensorboard.write_run(tmp_path, curve)
  lr = as_float32(0.1)
  assert lr != 0.1   # so the comparison below would notice a value that is not TensorBoard's float32
  assert read_scalars(tmp_path) == {"train/loss": [(1, 0.5), (2, 0.25)], "val/loss": [(2, 0.75)],
                                    "learning_rate": [(1, lr), (2, lr)], "sparsity": [(1, 0.0), (2, 0.0)]}


def test_writing_again_replaces_the_run_and_leaves_no_temporary_folder(tmp_path):
  first = tensorboard.write_run(tmp_path, [{"epoch": 1, "train_loss": 1.0}])
  first.rename(first.with_name(tensorboard.PREFIX + "1.earlier"))   # as a run written in another second would be
  path = tensorboard.write_run(tmp_path, [{"epoch": 1, "train_loss": 2.0}])
  assert [p.name for p in tmp_path.iterdir()] == [path.name]
  assert read_scalars(tmp_path) == {"train/loss": [(1, 2.0)]}


def test_every_run_of_the_cli_writes_its_per_epoch_values(tmp_path):
  proc = main_py(*MOONS, "--config.method=dynamic", "--config.train.epochs=6", "--config.prune.sparsity=0.5",
                 f"--config.workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "epoch/s" not in proc.stderr and "s/epoch" not in proc.stderr   # no progress bar off a terminal
  runs = json.loads((tmp_path / "results.json").read_text())["runs"]
  folders = sorted((tmp_path / "tensorboard").iterdir())
  assert [f.name for f in folders] == [Path(r["ticket"]).name for r in runs]
  for run, folder in zip(runs, folders):
    assert len(list(folder.iterdir())) == 1
    scalars = read_scalars(folder)
    assert sorted(scalars) == sorted(tensorboard.TAGS.values())
    for key, tag in tensorboard.TAGS.items():
      assert scalars[tag] == [(row["epoch"], as_float32(row[key])) for row in run["curve"]], tag
  # dynamic pruning: sparsity steps up during the one run, to the record's final sparsity
  sparsity = [value for _, value in read_scalars(folders[-1])["sparsity"]]
  assert sparsity[0] == 0.0 and sparsity == sorted(sparsity) and sparsity[-1] == pytest.approx(runs[-1]["sparsity"])
  assert len(set(sparsity)) == 3   # before, between and after the two pruning events


def test_tensorboard_off_writes_nothing(tmp_path):
  proc = main_py(*MOONS, "--config.method=dense", "--config.train.epochs=2", "--config.log.tensorboard=False",
                 f"--config.workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert not (tmp_path / "tensorboard").exists()
