"""Two processes of main.py on 127.0.0.1 (one CPU device each, gloo collectives) give the numbers of one
process with the same global batch, only process 0 writes what is not Orbax's to write, and the same
two-process command run again resumes from the checkpoints to the same results.

Each process runs main.py under an audit hook that logs every file it opens for writing, renames or
removes, so the test sees who wrote what rather than only what ended up on disk.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers import slow

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300   # a safety net against a hung peer, not a measure of anything

# Runs main.py as `python main.py ARGS` would, logging this process's writes to $WRITES_LOG first.
RUNNER = r"""
import os, runpy, sys
log = open(os.environ["WRITES_LOG"], "w", buffering=1)
def hook(event, args):
  if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
    mode, flags = args[1] or "", args[2] or 0
    if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
      log.write(f"open {os.fsdecode(args[0])}\n")
  elif event in ("os.rename", "os.remove"):
    log.write(f"{event} {os.fsdecode(args[1] if event == 'os.rename' else args[0])}\n")
sys.addaudithook(hook)
sys.argv = ["main.py", *sys.argv[1:]]
runpy.run_path("main.py", run_name="__main__")
"""

CONFIG = ["--config=configs/moons_mlp.py", "--config.method=oneshot_reinit", "--config.prune.sparsity=0.8",
          "--config.data.n_samples=400", "--config.model.widths=(16,16)", "--config.train.epochs=2",
          "--config.train.batch_size=32", "--config.train.eval_batch_size=64", "--config.finetune.epochs=1",
          "--config.metrics.ood=('uniform_noise',)", "--config.metrics.similarity_eps=(0.1,)",
          "--config.log.progress=False", "--config.log.tensorboard=False"]


def free_port() -> int:
  """A port free now; another process may take it before the coordinator binds it (`two_processes` retries)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# What process 0 says when its coordinator cannot bind the port (taken since `free_port` saw it free).
PORT_TAKEN = "Failed to start RPC server"


def start(workdir: Path, log: Path, extra=()) -> subprocess.Popen:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "PYTHONPATH": str(ROOT), "WRITES_LOG": str(log)}
  return subprocess.Popen([sys.executable, "-c", RUNNER, *CONFIG, f"--config.workdir={workdir}", *extra],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs: list) -> list[str]:
  try:
    outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def figures(workdir: Path) -> list[dict]:
  runs = json.loads((workdir / "results.json").read_text())["runs"]
  return [{"test_accuracy": r["test_accuracy"], "ece": r["ece"], "nll": r["nll"],
           "curve": [(row["train_loss"], row["val_loss"], row["test_accuracy"]) for row in r["curve"]]}
          for r in runs]


def assert_same_figures(two: list[dict], one: list[dict]) -> None:
  """The two-process run's figures are the one-process run's, to float tolerance."""
  assert [len(r["curve"]) for r in two] == [len(r["curve"]) for r in one] == [2, 2]
  for a, b in zip(two, one):
    for key in ("test_accuracy", "ece", "nll"):
      assert abs(a[key] - b[key]) <= 1e-5, (key, a[key], b[key])
    for row_a, row_b in zip(a["curve"], b["curve"]):
      assert max(abs(x - y) for x, y in zip(row_a, row_b)) <= 1e-5, (row_a, row_b)


def two_processes(workdir: Path, logs: str, extra=(), attempts: int = 3) -> list[str]:
  """Both processes to their end; again on a fresh port where process 0's was taken before it bound it."""
  for attempt in range(attempts):
    port = free_port()
    procs = [start(workdir, workdir.parent / f"{logs}.{i}",
                   ["--config.train.distributed=True", f"--config.train.coordinator=127.0.0.1:{port}",
                    "--config.train.num_processes=2", f"--config.train.process_id={i}", *extra]) for i in range(2)]
    try:
      outputs = [procs[0].communicate(timeout=TIMEOUT)[0]]
      # the coordinator comes up before anything is written: a retry finds the workdir as it was
      if procs[0].returncode != 0 and PORT_TAKEN in outputs[0] and attempt + 1 < attempts:
        continue   # process 1, waiting for a coordinator that never came up, is killed below
      outputs.append(procs[1].communicate(timeout=TIMEOUT)[0])
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
    for p, out in zip(procs, outputs):
      assert p.returncode == 0, out[-3000:]
    return outputs


@slow
def test_two_processes_match_one_and_only_process_0_writes_results(tmp_path):
  two_processes(tmp_path / "two", "writes")
  finish([start(tmp_path / "one", tmp_path / "writes.single")])

  assert_same_figures(figures(tmp_path / "two"), figures(tmp_path / "one"))

  workdir = tmp_path / "two"
  assert (workdir / "results.md").is_file() and len(list((workdir / "tickets").iterdir())) == 2
  writes = [(tmp_path / f"writes.{i}").read_text().splitlines() for i in range(2)]
  mine = lambda lines: {line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[1].startswith(str(workdir))}
  assert str(workdir / "results.json") in mine(writes[0])
  for path in mine(writes[1]):
    relative = os.path.relpath(path, workdir)
    if relative in (".lock.1", ".write_test.1"):
      continue
    # Orbax's own coordinated files (each process's array metadata and shards) are the only others
    assert relative.split(os.sep)[0] in ("checkpoints", "tickets"), relative
    assert not relative.endswith((".sha256", "model.json")), relative

  first = figures(workdir)
  outputs = two_processes(workdir, "rerun")
  assert all("resumed at epoch 2 from checkpoints" in out for out in outputs)
  assert figures(workdir) == first


@slow
def test_two_processes_fed_streamed_data_match_one_process(tmp_path):
  """data.pipeline=stream across two processes: each gathers the same host batch and places its devices' half
  of it (one global array), so the run gives one process's in-memory numbers."""
  two_processes(tmp_path / "two", "writes", ["--config.data.pipeline=stream"])
  finish([start(tmp_path / "one", tmp_path / "writes.single")])
  assert_same_figures(figures(tmp_path / "two"), figures(tmp_path / "one"))
