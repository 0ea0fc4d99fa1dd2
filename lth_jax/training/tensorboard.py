"""Training curves as TensorBoard event files, written by tensorboardX (no TensorFlow needed).

One run's curve goes to one file, written whole in a temporary folder and then renamed into the run's folder:
a resumed run that records the same run again replaces its file instead of adding a second, duplicate curve.
"""

import os
import tempfile
from pathlib import Path

import tensorboardX

# history row key -> TensorBoard tag; the slash groups the charts (train / val / test) in the dashboard
TAGS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy", "val_loss": "val/loss",
        "val_accuracy": "val/accuracy", "test_loss": "test/loss", "test_accuracy": "test/accuracy",
        "lr": "learning_rate", "sparsity": "sparsity"}
PREFIX = "events.out.tfevents."


def write_run(directory, curve: list[dict]) -> Path:
  """Writes one run's curve as the only event file in `directory`.

  Args:
    directory: the run's folder (created if missing); an event file already there is replaced.
    curve: history rows, one per epoch: "epoch" and any of the keys of `TAGS` (a None value is left out).

  Returns:
    The path of the event file.
  """
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  # the temporary folder sits in `directory`: the rename below stays on one file system, hence atomic
  with tempfile.TemporaryDirectory(dir=directory, prefix=".partial") as partial:
    with tensorboardX.SummaryWriter(partial) as writer:
      for row in curve:
        for key, tag in TAGS.items():
          if row.get(key) is not None:
            writer.add_scalar(tag, row[key], global_step=row["epoch"])
    written, = Path(partial).glob(PREFIX + "*")
    path = directory / written.name
    os.replace(written, path)
  for old in directory.glob(PREFIX + "*"):
    if old != path:
      old.unlink()
  return path
