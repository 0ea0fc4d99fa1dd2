"""Bad input stops before anything trains or is written; one workdir serves one run at a time."""

import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers import main_py, numbers
from tests.helpers import slow

SMALL = ["--config=configs/default.py", "--config.method=oneshot", "--config.data.name=moons",
         "--config.model.widths=(16,)", "--config.train.epochs=3", "--config.finetune.epochs=1",
         "--config.train.log_every=1", "--config.metrics.ood=('uniform_noise',)",
         "--config.metrics.similarity_eps=(0.1,)"]


def run(workdir, *extra):
  return main_py(*SMALL, f"--config.workdir={workdir}", *extra)


def one_line_error(proc, message: str) -> None:
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("lth_jax: error: ") and message in lines[-1], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def only_line(proc) -> str:
  """The one line of stderr that is not an INFO or WARNING log line (an ERROR one would be a second)."""
  assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if not re.match(r"[IW]\d{4} ", line)]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


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


def flip_a_byte(directory: Path) -> Path:
  """One bit flipped in the middle of the largest file under `directory` (the arrays' data)."""
  target = max((f for f in directory.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0x10
  target.write_bytes(bytes(data))
  return target


@slow
def test_damaged_checkpoints_fall_back_with_one_warning_each(straight, tmp_path):
  proc = run(tmp_path, "--config.checkpoint.every=1")
  assert proc.returncode == 0, proc.stderr[-2000:]
  flip_a_byte(tmp_path / "checkpoints" / "dense_0-3" / "3")
  # Garbled and without its checksum (a workdir from before checksums): Orbax itself fails to read it,
  # which used to flood stderr with tensorstore's "Event loop is closed" tracebacks.
  finetuned = tmp_path / "checkpoints" / "oneshot_0.8_0-1"
  (finetuned / "1.sha256").unlink()
  for data in (finetuned / "1" / "state").rglob("d/*"):
    data.write_bytes(bytes(data.stat().st_size))
  proc = run(tmp_path, "--config.checkpoint.every=1")   # replays every segment from its checkpoints
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "checkpoint 3 of dense/0-3 is corrupted" in proc.stderr and "using the one before it" in proc.stderr
  assert "dense: resumed at epoch 2" in proc.stderr
  assert proc.stderr.count("checkpoint 1 of oneshot@0.8/0-1 is unreadable") == 1
  assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
  assert all(len(line) < 400 for line in proc.stderr.splitlines())
  assert numbers(tmp_path) == numbers(straight)


def test_a_corrupted_or_foreign_ticket_is_refused_in_one_line(straight, tmp_path):
  runs = json.loads((straight / "results.json").read_text())["runs"]
  ticket = tmp_path / "ticket"
  subprocess.run(["cp", "-r", str(straight / runs[-1]["ticket"]), str(ticket)], check=True)
  evaluate = lambda path: run(tmp_path / "eval", "--config.mode=eval", f"--config.restore={path}")
  assert evaluate(ticket).returncode == 0
  flip_a_byte(ticket)
  one_line_error(evaluate(ticket), f"the ticket at {str(ticket)!r} is corrupted")
  one_line_error(evaluate(straight), f"the ticket at {str(straight)!r} cannot be read")   # a workdir


def test_a_rebuilt_ticket_without_its_model_json_is_refused_naming_it(tmp_path):
  # A shrunk ticket as slimming saves one (narrower than config.model; the full-width network and the
  # channels each group kept in model.json), made here without the slimming run.
  from tests.helpers import small_config
  from lth_jax import cli, experiment, masks, models
  from lth_jax.errors import UserError
  from lth_jax.training import checkpoint
  config = small_config(workdir=str(tmp_path / "eval"), **{"metrics.ood": (), "metrics.similarity_eps": ()})
  exp = experiment.build(config)
  narrow = models.get("mlp", num_classes=exp.num_classes, widths=(8, 4))
  params = narrow.init(exp.key("narrow"), exp.data["train"][0][:1], train=False)["params"]
  ticket = SimpleNamespace(params=params, batch_stats={}, masks=masks.init(params))
  path = tmp_path / "ticket"
  checkpoint.save_ticket(str(path), ticket, params, {
      "full_width": {"name": "mlp", "num_classes": 2, "widths": (16, 16)},
      "layer_channels": {"hidden_0": (8, 16), "hidden_1": (4, 16)}})
  config.mode, config.restore = "eval", str(path)
  full, _, kept = cli.ticket_model(config)   # read as the shrunk network it is
  assert full.model.widths == (16, 16) and kept == {"hidden_0": (8, 16), "hidden_1": (4, 16)}
  (path / "model.json").unlink()
  with pytest.raises(UserError, match=re.escape(f"the ticket at {str(path)!r} lacks its model.json")) as error:
    cli.run(config)
  assert "copy model.json back beside it" in str(error.value)
  (path / "checksum.sha256").unlink()   # a ticket saved before checksums: only its shapes tell
  with pytest.raises(UserError, match="does not fit config.model: hidden_0/bias is .8,. there and .16,. in the "
                                      "model; if it is a rebuilt .slimming, early_bird. ticket, its model.json is missing"):
    cli.run(config)


def npz_config(path):
  from lth_jax.config import base
  c = base().data
  c.name, c.dir = "npz", str(path)
  return c


@pytest.mark.parametrize("damage, message", [
    (lambda a: a["x_train"].__setitem__((5, 2), np.inf), "inputs hold non-finite values, e.g. inf"),
    (lambda a: a["x_test"].__setitem__((1, 0), np.nan), "the test inputs hold non-finite values, e.g. nan"),
    (lambda a: a["y_train"].__setitem__(7, 42), "labels hold 42, outside the 3 classes 0..2"),
    (lambda a: a.update(y_train=a["y_train"] * 0, y_test=a["y_test"] * 0), "has 1 class(es); classification needs"),
])
def test_bad_data_is_refused_naming_the_file_and_the_value(tmp_path, damage, message):
  from lth_jax import data as data_lib
  from lth_jax.errors import UserError
  rng = np.random.default_rng(0)
  arrays = {"x_train": rng.random((60, 4), np.float32), "y_train": np.arange(60) % 3,
            "x_test": rng.random((30, 4), np.float32), "y_test": np.arange(30) % 3}
  np.savez(tmp_path / "good.npz", **arrays)
  assert data_lib.load(npz_config(tmp_path / "good.npz"), 0).num_classes == 3
  damage(arrays)
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(UserError, match=re.escape(message)) as error:
    data_lib.load(npz_config(tmp_path / "bad.npz"), 0)
  assert str(tmp_path / "bad.npz") in str(error.value)


def test_an_empty_npz_is_refused(tmp_path):
  from lth_jax import data as data_lib
  from lth_jax.errors import UserError
  (tmp_path / "empty.npz").write_bytes(b"")
  with pytest.raises(UserError, match="not a readable .npz"):
    data_lib.load(npz_config(tmp_path / "empty.npz"), 0)


@pytest.fixture
def small_disk(tmp_path):
  """A 150 KiB tmpfs (the workdir of a run needs about 500 KiB), where the test may mount one."""
  mount = tmp_path / "disk"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(mount)], capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here")
  yield mount
  subprocess.run(["umount", str(mount)], check=True)


@slow
def test_a_full_disk_is_one_line_and_the_rerun_on_a_larger_disk_resumes(straight, small_disk):
  workdir = small_disk / "w"
  proc = run(workdir)
  # Where the disk fills (a checkpoint, a ticket, the report) depends on the file system's accounting;
  # each is reported in one line, and nothing Orbax's or tensorstore's threads print besides it.
  assert proc.returncode == 2, proc.stderr[-2000:]
  error = only_line(proc)
  assert error.startswith("lth_jax: error: ") and "No space left on device" in error, proc.stderr[-2000:]
  subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
  proc = run(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "resumed at epoch" in proc.stderr
  assert numbers(workdir) == numbers(straight)


def test_a_disk_full_at_the_first_checkpoint_is_one_line(small_disk):
  # 40k fills within the first checkpoint's save, where Orbax's threads used to print 6-8 tracebacks.
  subprocess.run(["mount", "-o", "remount,size=40k", str(small_disk)], check=True)
  proc = run(small_disk / "w")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert only_line(proc) == (f"lth_jax: error: cannot write a checkpoint under {str(small_disk / 'w' / 'checkpoints')!r} "
                             "(No space left on device); free space and rerun the same command to resume")


@pytest.mark.parametrize("key, value, message", [
    ("workdir", "", "config.workdir is empty"),
    ("compare.methods", (), "config.compare.methods is empty (compare would run only dense)"),
])
def test_empty_values_that_would_do_something_else_are_refused(key, value, message):
  from tests.helpers import small_config
  from lth_jax import experiment
  from lth_jax.errors import UserError
  experiment.validate(small_config(method="compare"))
  with pytest.raises(UserError, match=re.escape(message)):
    experiment.validate(small_config(method="compare", **{key: value}))


def test_the_model_can_be_switched_from_the_command_line():
  from lth_jax import experiment, models
  from lth_jax.config import base
  from lth_jax.errors import UserError
  c = base().model
  c.name = "resnet20"   # model.widths / activation / output_activation are the MLP's, at their defaults
  assert experiment.model_kwargs(c) == {}
  c.activation = "tanh"   # set deliberately: still refused
  with pytest.raises(UserError, match="config.model.activation does not apply to model 'resnet20'"):
    models.get(c.name, num_classes=10, **experiment.model_kwargs(c))


def test_restart_removes_the_old_plots(tmp_path):
  from tests.helpers import small_config
  from lth_jax.training import resume
  config = small_config(workdir=str(tmp_path))
  resume.prepare(config)
  (tmp_path / "curves.png").write_bytes(b"old")
  (tmp_path / "notes.txt").write_text("mine")
  config.checkpoint.restart = True
  resume.prepare(config)
  assert not (tmp_path / "curves.png").exists() and (tmp_path / "notes.txt").exists()
  assert (tmp_path / "config.json").exists()


def test_every_config_key_is_listed_with_its_default_and_meaning():
  from lth_jax import config
  listing = main_py("--config.help")
  assert listing.returncode == 0 and listing.stdout.strip() == config.describe()
  lines = {line.split(" = ")[0]: line for line in listing.stdout.splitlines()}
  assert set(lines) == set(config._flat(config.base()))
  assert lines["prune.scope"].startswith("prune.scope = 'global'") and lines["prune.scope"].endswith("# global | layerwise")
  assert "(and always at the end of a segment)" in lines["checkpoint.every"]
