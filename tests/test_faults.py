"""Every config reruns to the same results, and the faults a run survives with an uninterrupted run's numbers.

Each file in configs/, scaled down by flags onto built-in data (CASES), runs in this process; the same
run again is not refused, trains nothing and changes nothing (the convnet cases, minutes of compiling,
where LTH_JAX_SLOW_TESTS=1; every config's workdir check runs always). A representative run of each method family
(the unstructured ones side by side in one `compare`, slimming, early_bird, instability) is then driven
through faults on a second workdir by the command line itself -- SIGKILL in training, between rounds and
around a checkpoint save; checkpoints, tickets and results corrupted, truncated or deleted; a second run
on the busy workdir -- and ends with the uninterrupted run's results.json (timings aside). Each fault is
shown to have happened (the kill hit a live run; the next run warns of the damage or resumes from a
checkpoint). FAULTS lists them.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (ENV, ROOT, checkpoint_saved, kill_main_py, main_py, numbers, override, resumed_at,
                           slow)
from lth_jax import cli
from lth_jax.config import from_file
from lth_jax.errors import UserError
from lth_jax.training import checkpoint

# Small everywhere: two epochs, one sparsity, checkpoints every epoch, no OOD / similarity figures.
TINY = {"train.epochs": 2, "train.batch_size": 32, "train.log_every": 1, "finetune.epochs": 1,
        "iterative.rounds": 1, "compare.sparsities": (0.5,), "checkpoint.every": 1, "metrics.ood": (),
        "metrics.similarity_eps": (), "metrics.max_examples": 100, "log.progress": False,
        "log.tensorboard": False}
IMAGES = {"data.name": "digits", "data.subset": 128, "data.test_subset": 100}
CONVNET = {**IMAGES, "train.epochs": 1, "compare.methods": ("oneshot",)}   # compiling dominates: one run after dense
SLIMMING = {**IMAGES, "model.width": 4, "slimming.epochs": (1, 2), "slimming.retrain_epochs": 2}

# case -> (config file, flags): every file in configs/ at least once (`test_every_config_file_has_a_case`)
CASES = {
    # the unstructured families side by side from one dense run: lottery (oneshot, iterative), dynamic,
    # pruning at init, pruning during training (gradual) and sparse training (rigl)
    "default": ("default.py", {"data.subset": 128, "model.widths": (16,), "iterative.rounds": 2,
                               "compare.methods": ("oneshot", "iterative", "dynamic", "prune_at_init",
                                                   "gradual", "rigl"),
                               "gradual.every": 1, "sparse.every": 2}),
    "moons_mlp": ("moons_mlp.py", {"data.n_samples": 200, "model.widths": (8,)}),
    "penguins_mlp": ("penguins_mlp.py", {"model.widths": (4,)}),
    "fashion_mnist_mlp": ("fashion_mnist_mlp.py", {**IMAGES, "model.widths": (16,)}),
    "mnist_lenet": ("mnist_lenet.py", {**IMAGES, "iterative.random_control_every": 1, "train.steps": 0}),
    "cifar_conv": ("cifar_conv.py", {**IMAGES, "train.epochs": 1}),
    "cifar_resnet": ("cifar_resnet.py", {**CONVNET, "model.width": 4}),
    "cifar_resnet18": ("cifar_resnet18.py", {**CONVNET, "model.width": 4, "iterative.round_epochs": 1,
                                             "iterative.final_epochs": 1}),
    "imagenet_resnet50": ("imagenet_resnet50.py", {**IMAGES, "data.image_size": 0, "model.width": 4,
                                                   "prune.rewind_epoch": 1, "optimizer.warmup_epochs": 1.0}),
    "slimming": ("cifar_resnet_slimming.py", SLIMMING),
    "early_bird": ("cifar_resnet_slimming.py", {**SLIMMING, "method": "early_bird", "early_bird.max_epochs": 2}),
    "mnist_lenet_lmc": ("mnist_lenet_lmc.py", {**IMAGES, "train.steps": 0, "stability.rewind_steps": (0,),
                                               "stability.imp_rounds": (1,), "stability.points": 3,
                                               "stability.bn_examples": 32}),
    "instability": ("moons_mlp.py", {"method": "instability", "data.n_samples": 200, "model.widths": (8,),
                                     "stability.rewind_steps": (0, 3), "stability.points": 3,
                                     "stability.bn_examples": 32}),
}

# The convnet cases compile for minutes on a shared CPU (each process anew): their runs and fault chains
# run where LTH_JAX_SLOW_TESTS=1; without it, their configs are still checked by `test_every_config_reruns_unchanged`.
SLOW = {"cifar_conv", "cifar_resnet", "cifar_resnet18", "imagenet_resnet50", "slimming", "early_bird"}
# The other MLP configs rerun down the default case's code path (one MLP, the same methods' segments) on other
# data: their full reruns are slow-marked too; their workdir checks run always.
SLOW |= {"fashion_mnist_mlp", "penguins_mlp", "moons_mlp"}

# What the tests below do to a run, each followed by the same command (see each test for where).
FAULTS = {
    "compare": ["SIGKILL in dense training", "corrupted checkpoint (a byte flipped)",
                "SIGKILL in gradual's training, between mask updates",
                "truncated checkpoint without its checksum", "SIGKILL between iterative rounds",
                "deleted ticket", "corrupted ticket", "truncated results.json", "deleted config.json",
                "SIGKILL around a checkpoint save in iterative round 2", "deleted newest checkpoint",
                "a second run on the busy workdir"],
    "slimming": ["SIGKILL in the penalised dense training", "SIGKILL between slimming branches",
                 "corrupted shrunk ticket", "shrunk ticket's model.json deleted",
                 "garbled checkpoint checksum file", "SIGKILL in a branch's retraining"],
    "early_bird": ["SIGKILL in the Early-Bird search", "deleted checkpoints of a finished search epoch",
                   "SIGKILL in the shrunk network's retraining"],
    "instability": ["SIGKILL in a copy's training", "corrupted checkpoint of a finished copy",
                    "zeroed checkpoint data without its checksum", "truncated ticket", "deleted ticket"],
    "config.json": ["truncated, binary or non-object config.json: one line, exit 2, nothing trained"],
}


def load_config(name: str, workdir, scaled: bool = True):
  """The config the command line builds from the case's file in configs/ and (`scaled`) its flags."""
  path, flags = CASES[name]
  return override(from_file(ROOT / "configs" / path), **{**(TINY | flags if scaled else {}), "workdir": str(workdir)})


def argv(name: str, workdir) -> list[str]:
  """The same config as command-line flags."""
  path, flags = CASES[name]
  render = lambda v: v if isinstance(v, str) else repr(v)   # noqa: E731
  return [f"--config=configs/{path}", *(f"--config.{k}={render(v)}" for k, v in {**TINY, **flags}.items()),
          f"--config.workdir={workdir}"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """case -> the workdir of its uninterrupted run, run in this process once per module."""
  done = {}

  def get(name: str) -> Path:
    if name not in done:
      workdir = tmp_path_factory.mktemp(name)
      cli.run(load_config(name, workdir))
      done[name] = workdir
    return done[name]
  return get


def files(workdir, under: str) -> dict:
  return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in (Path(workdir) / under).rglob("*")}


def test_every_config_file_has_a_case():
  assert {os.path.basename(p) for p in glob.glob(str(ROOT / "configs" / "*.py"))} == {f for f, _ in CASES.values()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_config_is_accepted_by_its_own_rerun(name, tmp_path):
  # The workdir check alone (as cli.run calls it), on the config at full size: a config file lists only its
  # own model's keys, and a workdir written before a key existed (here train.eval_every) still resumes.
  from lth_jax import config as config_lib, experiment
  from lth_jax.training import resume
  check = lambda: resume.prepare(load_config(name, tmp_path, scaled=False), config_lib.base().to_dict(),  # noqa: E731
                                 experiment.model_arguments)
  check()
  check()
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["train"]["eval_every"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  check()
  saved["model"]["name"] = "vgg11"
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(UserError, match=r"holds a run of a different config \(model\."):   # another model: refused
    check()


@pytest.mark.parametrize("name", [pytest.param(n, marks=slow) if n in SLOW else n for n in sorted(CASES)])
def test_a_finished_run_reruns_to_the_same_results_and_trains_nothing(name, finished):
  workdir = finished(name)
  before, saved = numbers(workdir), files(workdir, "checkpoints")
  assert before[0]
  cli.run(load_config(name, workdir))   # refused before the fix for every config whose model is not the MLP
  assert numbers(workdir) == before
  assert files(workdir, "checkpoints") == saved   # every segment replayed from its last checkpoint


def flip_a_byte(directory: Path) -> None:
  """One bit flipped in the middle of the largest file under `directory` (the arrays' data)."""
  target = max((f for f in directory.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0x10
  target.write_bytes(bytes(data))


def truncate(path: Path) -> None:
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def newest(workdir, segment: str) -> tuple[int, Path]:
  """(epoch, directory) of the newest complete checkpoint of `segment` (its checksum written)."""
  store = checkpoint.SegmentStore(str(Path(workdir) / "checkpoints"), 1, 1)
  directory = Path(store._step_dir(segment, 0)).parent
  epoch = max(int(p.name[:-len(".sha256")]) for p in directory.glob("*.sha256"))
  return epoch, directory / str(epoch)


def record_line(method: str, round_: int) -> str:
  """The start of the log line cli writes once a run's record, ticket and results.json are saved."""
  return f"{method:<15} round {round_}  sparsity"


def training(segment: str, epoch: int, workdir):
  """`until` for kill_main_py: this run trained `epoch` of `segment` and its checkpoint is complete."""
  saved = checkpoint_saved(workdir, segment, epoch)
  return lambda log: f"{segment.rsplit('/', 1)[0]} epoch {epoch}/" in log and saved(log)


def kill(name, workdir, until) -> str:
  return kill_main_py(*argv(name, workdir), until=until)


def rerun(name, workdir) -> str:
  proc = main_py(*argv(name, workdir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


def same_as(workdir, reference) -> None:
  assert numbers(workdir) == numbers(reference)
  for run in json.loads((Path(workdir) / "results.json").read_text())["runs"]:
    checkpoint.load_ticket(str(Path(workdir) / run["ticket"]))   # every ticket whole (checksums verified)


@slow   # the MLP chains of the other families run in CI; this one repeats them on compare's four runs
def test_compare_survives_kills_and_damage_to_identical_numbers(finished, tmp_path):
  reference, w = finished("default"), tmp_path
  kill("default", w, training("dense/0-2", 1, w))
  epoch, damaged = newest(w, "dense/0-2")
  flip_a_byte(damaged)
  log = kill("default", w, training("gradual@0.5/0-2", 1, w))
  assert f"checkpoint {epoch} of dense/0-2 is corrupted" in log
  epoch, damaged = newest(w, "gradual@0.5/0-2")
  truncate(max((f for f in damaged.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size))
  (damaged.parent / f"{epoch}.sha256").unlink()
  log = kill("default", w, record_line("iterative", 1))
  assert f"checkpoint {epoch} of gradual@0.5/0-2 is unreadable" in log and resumed_at(log)["dense"] == 2
  runs = json.loads((w / "results.json").read_text())["runs"]
  shutil.rmtree(w / next(r["ticket"] for r in runs if r["method"] == "iterative"))
  flip_a_byte(w / next(r["ticket"] for r in runs if r["method"] == "oneshot"))
  truncate(w / "results.json")
  (w / "config.json").unlink()
  log = kill("default", w, "iterative round 2 epoch 1/2")   # the checkpoint save follows this line
  assert resumed_at(log)["gradual@0.5"] == 2 and resumed_at(log)["iterative round 1"] == 2
  shutil.rmtree(newest(w, "dense/0-2")[1])   # epoch 2's
  # The last run; once it holds the workdir it is stopped (not killed) while a second run is refused.
  proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *argv("default", w)], cwd=ROOT, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    log = ""
    for line in proc.stderr:
      log += line
      if "resumed at epoch" in line:   # past the lock
        break
    proc.send_signal(signal.SIGSTOP)
    second = main_py(*argv("default", w))
    proc.send_signal(signal.SIGCONT)
    log += proc.communicate(timeout=600)[1]
  finally:
    proc.kill()
    proc.wait()
  assert second.returncode == 2 and f"is in use by process {proc.pid}" in second.stderr, second.stderr[-2000:]
  assert proc.returncode == 0, log[-3000:]
  assert resumed_at(log)["dense"] == 1   # its newest checkpoint deleted: the one before it
  same_as(w, reference)


@slow
def test_slimming_survives_kills_and_damage_to_identical_numbers(finished, tmp_path):
  reference, w = finished("slimming"), tmp_path
  kill("slimming", w, training("slimming dense/0-1", 1, w))
  log = kill("slimming", w, record_line("slimming", 1))
  assert resumed_at(log)["slimming dense"] == 1
  ticket = w / json.loads((w / "results.json").read_text())["runs"][1]["ticket"]
  flip_a_byte(ticket)
  (ticket / "model.json").unlink()
  (newest(w, "slimming@1/0-2")[1].parent / "2.sha256").write_text("not a checksum")
  log = kill("slimming", w, training("slimming@2/0-2", 1, w))
  assert "checkpoint 2 of slimming@1/0-2 is corrupted" in log and resumed_at(log)["slimming@1"] == 1
  log = rerun("slimming", w)
  assert resumed_at(log)["slimming@2"] >= 1
  same_as(w, reference)
  assert checkpoint.load_metadata(str(ticket))["full_width"]["name"] == "resnet20"   # its model.json is back


@slow
def test_early_bird_survives_kills_and_damage_to_identical_numbers(finished, tmp_path):
  reference, w = finished("early_bird"), tmp_path
  kill("early_bird", w, training("early_bird search/1-2", 2, w))
  shutil.rmtree(w / "checkpoints" / "early_bird_search_0-1")
  log = kill("early_bird", w, training("early_bird@2/0-2", 1, w))
  assert "early_bird search epoch 1/1" in log   # retrained
  assert resumed_at(log)["early_bird search"] == 2
  log = rerun("early_bird", w)
  assert resumed_at(log)["early_bird@2"] >= 1
  same_as(w, reference)


def test_instability_survives_a_kill_and_damage_to_identical_numbers(finished, tmp_path):
  reference, w = finished("instability"), tmp_path
  kill("instability", w, training("instability/ticket/k0/copy1/0-2", 1, w))
  flip_a_byte(newest(w, "instability/dense/k0/copy0/0-2")[1])
  zeroed = newest(w, "instability/dense/k0/copy1/0-2")[1]
  (zeroed.parent / "2.sha256").unlink()
  for data in zeroed.rglob("d/*"):
    data.write_bytes(bytes(data.stat().st_size))
  runs = json.loads((w / "results.json").read_text())["runs"]
  ticket = w / runs[0]["ticket"]
  truncate(max((f for f in ticket.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size))
  pytest.raises(UserError, checkpoint.load_ticket, str(ticket))   # damaged as a user would find it
  shutil.rmtree(w / runs[-1]["ticket"])   # another one
  log = rerun("instability", w)
  assert "checkpoint 2 of instability/dense/k0/copy0/0-2 is corrupted" in log
  assert "checkpoint 2 of instability/dense/k0/copy1/0-2 is unreadable" in log
  assert resumed_at(log)["instability/ticket/k0/copy1"] >= 1
  same_as(w, reference)


@pytest.mark.parametrize("content", [b'{"seed": 0, "data": {', b"\xff\xfe\x00", b"[1, 2]"])
def test_a_damaged_config_json_is_one_line_before_anything_trains(tmp_path, content):
  from tests.helpers import small_config
  (tmp_path / "config.json").write_bytes(content)
  with pytest.raises(UserError, match=re.escape(f"config.workdir={str(tmp_path)!r} holds an unreadable "
                                                "config.json")):
    cli.run(small_config(workdir=str(tmp_path)))
  assert not (tmp_path / "checkpoints").exists()


def test_the_census_counts_at_least_25_faults():
  # tests/test_resume.py, test_reliability.py and test_sparse_training.py add 11 more (kills at other points,
  # damaged checkpoints and tickets, a full disk, a busy workdir)
  assert sum(len(v) for v in FAULTS.values()) >= 25
