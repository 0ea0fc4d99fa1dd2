"""A workdir remembers the config that made it: the same command resumes, a different one is refused.

The first run writes `config.json` into the workdir and keeps segment checkpoints under
`checkpoints/`. A later run with the same workdir compares configs: equal in everything that changes
results → resume; different → a one-line error naming the first differing key, unless
`config.checkpoint.restart=True`, which deletes the old checkpoints, tickets and results first.
"""

import fcntl
import json
import os
import shutil

from lth_jax.training import checkpoint
from lth_jax.errors import UserError

# Keys that do not change any number a run produces.
IGNORED = ("workdir", "mode", "restore", "train.log_every", "checkpoint.every", "checkpoint.keep",
           "checkpoint.restart", "train.coordinator", "train.process_id")


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, path + "."))
    else:
      flat[path] = list(value) if isinstance(value, tuple) else value
  return flat


def settings(config: dict, defaults: dict | None = None, model_arguments=None) -> dict:
  """The flat settings `config` (a config as config.json holds it) runs with, comparable across runs.

  A key it lacks reads as its value in `defaults`: a key added to lth_jax after the workdir was made, at
  a default that keeps the old behaviour, changes nothing. config.model reads as `model_arguments(model)`
  (what the model is built from) where given: `defaults`' model keys are one model's, and a config file
  lists only the keys of its own model.
  """
  config, defaults = json.loads(json.dumps([config, defaults or {}], default=str))
  flat = {k: v for k, v in {**_flatten(defaults), **_flatten(config)}.items() if not k.startswith("model.")}
  model = config.get("model", defaults.get("model", {}))
  if model_arguments is not None:
    model = json.loads(json.dumps(model_arguments(model), default=str))
  return {**flat, **_flatten(model, "model.")}


def differences(saved: dict, current: dict, defaults: dict | None = None, model_arguments=None) -> list[str]:
  """The keys whose values differ, as 'key: saved -> current', both read as `settings`."""
  a, b = (settings(c, defaults, model_arguments) for c in (saved, current))
  keys = sorted((set(a) | set(b)) - set(IGNORED))
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys if a.get(k) != b.get(k)]


LOCK = ".lock"


def lock(workdir: str, name: str = LOCK):
  """An exclusive lock on `workdir` for as long as the returned file stays open (the kernel drops it when
  the process dies, however it dies); a second run on the same workdir is refused, naming the holder."""
  handle = open(os.path.join(workdir, name), "a+")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise UserError(f"config.workdir={workdir!r} is in use by {holder}; wait for it to finish or use "
                    "another workdir") from None
  handle.seek(0)
  handle.truncate()
  handle.write(f"process {os.getpid()}")
  handle.flush()
  return handle


def _read_config(workdir: str) -> dict:
  """The config saved in `workdir`; one line naming it if it was damaged (it is written atomically)."""
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      saved = json.load(f)
  except ValueError as e:   # not JSON, or not UTF-8
    saved = e
  if not isinstance(saved, dict):
    reason = f"{type(saved).__name__}: {saved}" if isinstance(saved, Exception) else "not a config"
    raise UserError(f"config.workdir={workdir!r} holds an unreadable config.json ({reason[:200]}); remove it to "
                    "resume with this config, or use --config.checkpoint.restart=True to start over")
  return saved


def prepare(config, defaults: dict | None = None, model_arguments=None) -> checkpoint.SegmentStore:
  """Check the workdir against `config` (restarting it if asked) and return its checkpoint store.

  `defaults`: every key's default value; `model_arguments`: config.model -> what the model is built from
  (see `settings`).
  """
  workdir = config.workdir
  saved_path = os.path.join(workdir, "config.json")
  primary = checkpoint.is_primary()   # the other processes of a multi-process run only read the workdir
  if config.checkpoint.restart and primary:
    for name in ("checkpoints", "tickets"):
      shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
    for name in os.listdir(workdir):   # the plots too: a restarted run may not draw all of them again
      if name in ("config.json", "results.json", "results.md") or name.endswith(".png"):
        os.remove(os.path.join(workdir, name))
  elif os.path.exists(saved_path) and not config.checkpoint.restart:
    saved = _read_config(workdir)
    diff = differences(saved, config.to_dict(), defaults, model_arguments)
    if diff:
      raise UserError(f"config.workdir={workdir!r} holds a run of a different config ({diff[0]}"
                      f"{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); use another workdir or "
                      "--config.checkpoint.restart=True to start over")
  os.makedirs(os.path.join(workdir, "tickets"), exist_ok=True)
  if primary:
    checkpoint.write_atomic(saved_path, json.dumps(config.to_dict(), indent=1, default=str))
  return checkpoint.SegmentStore(os.path.join(workdir, "checkpoints"), config.checkpoint.every,
                                 config.checkpoint.keep)
