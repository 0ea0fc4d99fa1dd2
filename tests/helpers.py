"""What several test files share: a small config, a recorder that keeps everything, ways to run a
method's program or a single fit without the command line, and the command line in a subprocess."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import PIL.Image
import pytest

from absl import flags

from lth_jax import cli, methods
from lth_jax.config import base
from lth_jax.methods import cohort, lottery
from lth_jax.sparsity import masks
from lth_jax.training import checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def small_config(**overrides):
  c = base()
  c.data.name = "moons"
  c.data.n_samples = 400
  c.model.widths = (16, 16)
  c.train.epochs = 4
  c.train.batch_size = 32
  c.train.log_every = 0
  c.finetune.epochs = 2
  c.optimizer.weight_decay = 1e-3
  return override(c, **overrides)


def override(c, **overrides):
  """Set dotted keys: override(c, **{"train.epochs": 3})."""
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


class Collect:
  """A recorder that keeps every run as results.json has it, its final state and its reset weights."""

  def __init__(self):
    self.records, self.states, self.rewinds = [], [], []

  def __call__(self, record, state, rewind_params):
    self.records.append(record.as_dict())
    self.states.append(state)
    self.rewinds.append(rewind_params)


def leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def drive(program, vmap: bool = False):
  """Run one method program to its end; its return value."""
  return cohort.run([program], vmap)[0]


def run_method(exp, recorder) -> None:
  """config.method on `exp` alone, as the command line runs it for one seed."""
  methods.run([exp], [recorder])


def oneshot(exp, dense_run, sparsity: float, recorder, reset: str = "none"):
  """One ticket of a one-shot sweep; its final state."""
  return drive(lottery.oneshot_sweep(exp, dense_run, [sparsity], recorder, reset))[0]


def fit(trainer, state, data, end_epoch: int, name: str = ""):
  """Train one state: (state, history)."""
  states, histories = trainer.fit([state], data, end_epoch, [name])
  return states[0], histories[0]


def main_py(*args, cwd=ROOT, env=(), timeout: float = 600) -> subprocess.CompletedProcess:
  """`python main.py ARGS` in a subprocess on the CPU, its output captured (the timeout is a safety net)."""
  return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env={**ENV, **dict(env)},
                        capture_output=True, text=True, timeout=timeout)


def kill_main_py(*args, until, poll_s: float = 0.01) -> str:
  """Start `python main.py ARGS`, SIGKILL it as soon as `until` holds, and return its log up to the kill.

  `until`: a string (a log line holding it has been written) or a function of the log so far (e.g.
  `checkpoint_saved`'s). Fails if the run ends on its own before that or before the kill lands: the
  kill provably hit a live run. Where exactly it dies varies from run to run; what the tests assert (a
  rerun's numbers, which checkpoint it resumed from) must not.
  """
  proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=ENV, stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, text=True)
  lines = []

  def read():   # keeps the pipe drained
    for line in proc.stderr:
      lines.append(line)
  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  reached = (lambda log: until in log) if isinstance(until, str) else until
  try:
    while not reached("".join(lines)):
      if proc.poll() is not None:
        reader.join(timeout=60)
        raise AssertionError(f"the run ended (exit {proc.returncode}) before {until!r}:\n{''.join(lines)[-3000:]}")
      time.sleep(poll_s)
  finally:
    proc.kill()
    proc.wait(timeout=60)
    reader.join(timeout=60)
  log = "".join(lines)
  assert proc.returncode == -signal.SIGKILL, f"the run exited ({proc.returncode}) before the kill:\n{log[-3000:]}"
  return log


def resumed_at(log: str) -> dict[str, int]:
  """Segment names -> the epoch their checkpoints resumed them at, from a run's log lines
  ("dense: resumed at epoch 3 from checkpoints"; several members trained together share one line)."""
  found = {}
  for names, epoch in re.findall(r"\] (.+): resumed at epoch (\d+) from checkpoints", log):
    found.update({name: int(epoch) for name in names.split(", ")})
  return found


def checkpoint_saved(workdir, segment: str, epoch: int):
  """`until` for kill_main_py: segment `segment` ("dense/0-6") has a complete checkpoint at `epoch` (its
  checksum, written once the save finished)."""
  checksum = checkpoint.SegmentStore(str(Path(workdir) / "checkpoints"), 1, 1)._checksum(segment, epoch)
  return lambda log: os.path.exists(checksum)


# What a run measures on the clock, different from run to run: the rest of results.json is reproducible.
TIMINGS = ("wall_time_s", "inference_time_s", "dense_inference_time_s", "inference_speedup")


def numbers(workdir):
  """(complete, runs) of a workdir's results.json, without the timings that differ between runs."""
  doc = json.loads((Path(workdir) / "results.json").read_text())
  return doc["complete"], [{k: v for k, v in r.items() if k not in TIMINGS} for r in doc["runs"]]


def last_ticket_arrays(workdir) -> list:
  """The masks and weights of the last run's ticket, as numpy arrays."""
  runs = json.loads((Path(workdir) / "results.json").read_text())["runs"]
  ticket = checkpoint.load_ticket(str(Path(workdir) / runs[-1]["ticket"]))
  return [np.asarray(x) for x in jax.tree.leaves((ticket["masks"], ticket["params"]))]


# Tests that compile convnets for minutes on a CPU, or repeat what a faster test already proves on a larger
# model: they run where LTH_JAX_SLOW_TESTS=1 (the suite's time budget on 2 cores keeps them out of CI).
slow = pytest.mark.skipif(not os.environ.get("LTH_JAX_SLOW_TESTS"),
                          reason="minutes of compiling on CPU; set LTH_JAX_SLOW_TESTS=1")


def pruned_and_kept(tree, m):
  """(the values at the mask's zeros, the values at its ones), each flattened over every leaf."""
  pairs = [(np.asarray(x), np.asarray(k) != 0) for x, k in zip(jax.tree.leaves(tree), jax.tree.leaves(m))]
  return np.concatenate([x[~keep] for x, keep in pairs]), np.concatenate([x[keep] for x, keep in pairs])


def load_example(path):
  """examples/<path> as a module, without running its __main__ block."""
  spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def check_imp_example_rounds(results):
  """What examples/own_loop.py and own_loop_nnx.py promise of their 3 rounds of IMP to 80% on the same CNN:
  exact counts per round, exact zeros, biases never pruned, cumulative masks."""
  assert [r["round"] for r in results] == [1, 2, 3]

  first = results[0]
  which = masks.prunable(first["params"])
  total = sum(int(np.size(p)) for p, w in zip(jax.tree.leaves(first["params"]), jax.tree.leaves(which)) if w)
  # conv 3*3*1*16, conv 3*3*16*32, dense (4*4*32)*64, dense 64*10: the kernels only.
  assert total == 144 + 4608 + 32768 + 640
  rate = 1 - (1 - 0.8) ** (1 / 3)
  remaining = total
  for r in results:
    remaining -= round(rate * remaining)
    assert masks.count(r["masks"], which) == (remaining, total)
    assert r["sparsity"] == pytest.approx(1 - remaining / total, abs=1e-12)
    final_pruned, _ = pruned_and_kept(r["params"], r["masks"])
    assert final_pruned.size == total - remaining and np.array_equal(final_pruned, np.zeros_like(final_pruned))
    # Biases are never pruned.
    non_kernels = [np.asarray(k) for k, w in zip(jax.tree.leaves(r["masks"]), jax.tree.leaves(which)) if not w]
    assert all(np.all(k == 1) for k in non_kernels)
    assert isinstance(r["test_accuracy"], float) and 0.0 <= r["test_accuracy"] <= 1.0
    assert isinstance(r["ece"], float) and 0.0 <= r["ece"] <= 1.0
  sparsities = [r["sparsity"] for r in results]
  assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.8, abs=1e-3)
  # Masks are cumulative: a weight pruned in one round stays pruned.
  for a, b in zip(results, results[1:]):
    assert all(np.all(np.asarray(nb)[np.asarray(na) == 0] == 0)
               for na, nb in zip(jax.tree.leaves(a["masks"]), jax.tree.leaves(b["masks"])))


def flag_run(argv, capsys):
  """main.py's flag handling in this process: (exit status or None, stderr, the config)."""
  flag_values = flags.FlagValues()
  try:
    holder = cli.define_config(argv, "configs/default.py", flag_values)
    cli.parse_flags(argv, flag_values)
    return None, capsys.readouterr().err, holder.value
  except SystemExit as e:
    return e.code, capsys.readouterr().err, None


IMAGE_CLASSES = ["zebra", "ant", "cat"]  # written unsorted: the labels follow the sorted names


def write_image_folder(root: Path, mode="RGB", size=(5, 4)):
  """root/{train,test}/<class>/<i>.png with random pixels; returns {split: (pixels, labels)} in sorted order."""
  rng = np.random.default_rng(2)
  channels = {"RGB": 3, "L": 1}[mode]
  written = {}
  for split_name, per_class in (("train", 4), ("test", 2)):
    pixels, labels = [], []
    for label, name in enumerate(sorted(IMAGE_CLASSES)):
      (root / split_name / name).mkdir(parents=True)
      for i in range(per_class):
        image = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        PIL.Image.fromarray(image[..., 0] if mode == "L" else image, mode).save(root / split_name / name / f"{i}.png")
        pixels.append(image)
        labels.append(label)
    written[split_name] = np.stack(pixels), np.array(labels)
  (root / "train" / "ant" / ".DS_Store").write_bytes(b"not an image")
  (root / "README.txt").write_text("ignored")
  return written
