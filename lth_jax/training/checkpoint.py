"""Saving and reloading tickets with Orbax: params, BatchNorm statistics, masks and the rewind weights.

Every saved checkpoint and ticket gets a SHA-256 of its files (`digest`), checked before it is read:
Orbax notices a truncated file but not a flipped bit in the data, which would resume silently.

In a multi-process run every process calls the Orbax saves (Orbax synchronises them and its primary
host writes what is replicated); the files lth_jax adds beside them are process 0's alone.
"""

import contextlib
import hashlib
import json
import logging as std_logging
import os
import sys
import traceback
from typing import Callable

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from absl import logging

from lth_jax.errors import UserError
from lth_jax.sparsity.masks import named_leaves


@contextlib.contextmanager
def _quiet():
  """Orbax logs several INFO lines per save through absl, and a failed write or read as ERROR with its
  traceback; every failure inside is raised to the caller, which reports it in one line."""
  undo = _contain_background_noise()
  level = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    yield
  except BaseException:
    raise   # the failure's echoes come after it has been raised: the containment stays
  else:
    undo()
  finally:
    logging.set_verbosity(level)


def is_primary() -> bool:
  """Whether this process writes the files every process could write (process 0 of a multi-process run)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Every process waits here for the others (nothing to wait for in a one-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _not_from_orbax(record) -> bool:
  return f"{os.sep}orbax{os.sep}" not in record.pathname


def _not_an_orbax_future(record) -> bool:
  """False for asyncio's "exception was never retrieved" report of a future that failed inside Orbax."""
  error = record.exc_info[1] if record.exc_info else None
  while error is not None:
    frames = traceback.extract_tb(error.__traceback__)
    if any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames):
      return False
    error = error.__context__
  return True


def _drop_closed_loop_callbacks(unraisable, previous) -> None:
  if not (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed"):
    previous(unraisable)


def _contain_background_noise() -> Callable[[], None]:
  """What outlives a failed Orbax call, which `_quiet` cannot hold back (issue 18: ~120 traceback lines):

  - when a save or restore fails, Orbax closes its asyncio loop while tensorstore's threads still hold
    futures of it; each then reports "Event loop is closed" through sys.unraisablehook, with a traceback;
  - Orbax's own threads go on after the call has raised and log the same failure as ERROR, with a
    traceback, once `_quiet` has restored the verbosity;
  - a future of Orbax's loop that failed (a full disk) is reported by asyncio as "exception was never
    retrieved", with a traceback, whenever it is garbage-collected.
  All are the failure already raised to our caller. From here on the hook drops exactly that report and
  passes every other to the hook installed before, absl drops Orbax's records and asyncio the reports of
  Orbax's futures. Returns what undoes all three, called by their owner once nothing of Orbax's runs any
  more and nothing failed (`_quiet` after a call, `SegmentStore.close`), so the process keeps its own hook
  and logs; after a failure they stay, as its echoes may come at any later time.
  """
  previous = sys.unraisablehook
  if getattr(previous, "lth_jax", False):   # an earlier failure's containment: keep it
    return lambda: None
  hook = lambda unraisable: _drop_closed_loop_callbacks(unraisable, previous)  # noqa: E731
  hook.lth_jax = True
  sys.unraisablehook = hook
  filters = [(logger, f) for logger, f in ((logging.get_absl_logger(), _not_from_orbax),
                                           (std_logging.getLogger("asyncio"), _not_an_orbax_future))
             if f not in logger.filters]
  for logger, f in filters:
    logger.addFilter(f)

  def undo():
    if sys.unraisablehook is hook:
      sys.unraisablehook = previous
    for logger, f in filters:
      logger.removeFilter(f)
  return undo


METADATA = "model.json"
_RESTORE_METADATA = ("copy model.json back beside it from the workdir that saved the ticket (tickets/<name>/), "
                     "or rerun that training")
CHECKSUM = "checksum.sha256"   # inside a ticket; a segment's checkpoint at step k has k.sha256 beside it


def digest(directory: str) -> str:
  """SHA-256 over every file under `directory` (names and contents, in `_files` order) but the ticket's checksum."""
  h = hashlib.sha256()
  for relative in _files(directory):
    h.update(relative.encode() + b"\0")
    with open(os.path.join(directory, relative), "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()


def _files(directory: str) -> list[str]:
  """The files `digest` covers, relative to `directory`: a directory's own files (sorted), then its
  subdirectories' (sorted); every file but a ticket's checksum."""
  found = []
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    found += [os.path.relpath(os.path.join(root, name), directory) for name in sorted(files) if name != CHECKSUM]
  return found


def _checksum_lines(checksum_path: str) -> list[str] | None:
  """The digest, then (for a ticket) the files it covers; None when no checksum was written."""
  try:
    with open(checksum_path) as f:
      return [line for line in f.read().splitlines() if line]
  except FileNotFoundError:
    return None


def _verify(directory: str, checksum_path: str) -> bool | None:
  """True: the files match the checksum written with them; False: they do not; None: none was written."""
  lines = _checksum_lines(checksum_path)
  return None if not lines else digest(directory) == lines[0]


def save_ticket(path: str, state, rewind_params, metadata: dict | None = None) -> None:
  """Writes {params, batch_stats, masks, rewind_params} of a trained ticket to `path` (a new directory).

  `metadata` (e.g. a shrunk network's full-width model and the channels it kept) goes to path/model.json,
  so the ticket reloads without the config that made it (`load_metadata`).
  """
  tree = {"params": state.params, "batch_stats": state.batch_stats, "masks": state.masks,
          "rewind_params": rewind_params}
  if jax.process_count() > 1:
    # Some leaves live on one process's device only (theta_0, a fresh random init), which Orbax refuses in
    # a multi-process save; every process holds the same values, and Orbax writes numpy from process 0.
    tree = jax.device_get(tree)
  try:
    with _quiet(), ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.abspath(path), tree, force=True)
    if not is_primary():
      return
    if metadata is not None:  # after the checkpointer has closed: the directory is complete
      with open(os.path.join(path, METADATA), "w") as f:
        json.dump(metadata, f, indent=1)
    # The file list lets a damaged ticket be refused naming what is missing (a lost model.json above all).
    write_atomic(os.path.join(path, CHECKSUM), "\n".join([digest(path), *_files(path)]))
  except Exception as e:  # noqa: BLE001  -- as in SegmentStore.save
    raise UserError(f"cannot write the ticket {path!r} ({_reason(e)}); free space and rerun the same command "
                    "to resume") from None


def load_metadata(path: str) -> dict | None:
  """What `save_ticket` wrote as metadata beside the ticket at `path`; None when it wrote none.

  JSON's lists come back as tuples, as the widths were saved: flax module fields must be hashable.
  """
  try:
    with open(os.path.join(path, METADATA)) as f:
      return _tuples(json.load(f))
  except (FileNotFoundError, NotADirectoryError):  # no ticket there at all: load_ticket says so
    return None
  except json.JSONDecodeError as e:
    raise UserError(f"{os.path.join(path, METADATA)!r} is not the JSON lth_jax writes: {e}") from None


def _tuples(value):
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def load_ticket(path: str) -> dict:
  """The tree `save_ticket` wrote, as numpy-backed jax arrays; a damaged ticket is refused in one line."""
  if not os.path.isdir(path):
    raise UserError(f"no ticket at {path!r}: expected a directory written by lth_jax (workdir/tickets/...)")
  if _verify(path, os.path.join(path, CHECKSUM)) is False:
    missing = [f for f in _checksum_lines(os.path.join(path, CHECKSUM))[1:] if not os.path.exists(os.path.join(path, f))]
    if METADATA in missing:
      raise UserError(f"the ticket at {path!r} lacks its {METADATA}, the rebuilt (slimming, early_bird) network it "
                      f"holds; {_RESTORE_METADATA}")
    raise UserError(f"the ticket at {path!r} is corrupted: "
                    + (f"{missing[0]} is missing" if missing else "its files do not match the checksum saved with them"))
  try:
    with _quiet(), ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(os.path.abspath(path))
  except Exception as e:  # noqa: BLE001  -- whatever Orbax raises on a damaged or foreign directory
    raise UserError(f"the ticket at {path!r} cannot be read ({type(e).__name__}: {_first_line(e)}); expected a "
                    "directory written by lth_jax (workdir/tickets/...)") from None


def _first_line(e: Exception) -> str:
  return str(e).splitlines()[0] if str(e) else ""


def _reason(e: Exception) -> str:
  """'No space left on device' wherever a write failure buries it (tensorstore nests the OS error)."""
  text = f"{getattr(e, 'strerror', None) or ''} {e}"
  for known in ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied"):
    if known in text:
      return known
  return f"{type(e).__name__}: {_first_line(e)[:200]}"


def export_npz(path: str, params, masks) -> None:
  """The masked weights as a plain .npz, one array per leaf name ('hidden_0/kernel')."""
  masked = jax.tree.map(lambda p, m: np.asarray(p * m), params, masks)
  np.savez(path, **dict(named_leaves(masked)))


class SegmentStore:
  """Orbax checkpoints of every training segment of an experiment, so a killed run resumes exactly.

  A segment is one `Trainer.fit` call, named uniquely within the experiment ("dense/0-40",
  "iterative round 3/0-40"). Each is saved every `every` epochs and at its end through its own
  `CheckpointManager` (atomic writes, keep the last `keep`). Everything between segments — pruning,
  resets, keys — is a deterministic function of the config and of finished segments, so re-running
  the same command replays finished segments from their last checkpoint, continues the interrupted
  one from its newest checkpoint, and gives the numbers of an uninterrupted run bit for bit.

  Each checkpoint also keeps the segment's training seconds so far; what a resumed run reads back adds up in
  `credited_s`, so its wall times are those of the work it holds, not of the read-back (`Experiment.now`).
  """

  def __init__(self, directory: str, every: int, keep: int):
    self.directory, self.every, self.keep = os.path.abspath(directory), every, keep
    self._managers, self.credited_s = {}, 0.0   # credited_s: training seconds read back from checkpoints
    # Orbax's managers run threads of their own (metadata writes) that may fail after a call returned:
    # their noise is contained while a manager is open, and after `close` unless a call failed.
    self._undo_containment, self._failed = None, False

  def _segment_dir(self, name: str) -> str:
    return os.path.join(self.directory, "".join(c if c.isalnum() or c in "-_." else "_" for c in name))

  def _step_dir(self, name: str, step: int) -> str:
    return os.path.join(self._segment_dir(name), str(step))

  def _checksum(self, name: str, step: int) -> str:
    return os.path.join(self._segment_dir(name), f"{step}.sha256")

  def _manager(self, name: str) -> ocp.CheckpointManager:
    if name not in self._managers:
      if self._undo_containment is None:
        self._undo_containment = _contain_background_noise()
      options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
      with _quiet():
        self._managers[name] = ocp.CheckpointManager(self._segment_dir(name), options=options)
    return self._managers[name]

  def credit(self, seconds: float) -> None:
    """Counts `seconds` of training read back from checkpoints (what those epochs took when they ran)."""
    self.credited_s += seconds

  def save(self, name: str, epoch: int, state, history: list, final: bool, seconds: float = 0.0) -> None:
    """Checkpoints segment `name` at `epoch` (its state, history and training `seconds` so far) every `every`
    epochs and when `final`."""
    if not (final or epoch % self.every == 0):
      return
    manager = self._manager(name)
    tree = state.replace(rng=jax.random.key_data(state.rng))
    try:
      with _quiet():
        if epoch in manager.all_steps():   # an unreadable checkpoint we fell back from: replace it
          manager.delete(epoch)
        manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                    history=ocp.args.JsonSave({"rows": history, "seconds": seconds})),
                     force=True)
        manager.wait_until_finished()
      if not is_primary():
        return
      write_atomic(self._checksum(name, epoch), digest(self._step_dir(name, epoch)))
      kept = {str(s) for s in manager.all_steps()}
      for stale in os.listdir(self._segment_dir(name)):   # checksums of checkpoints Orbax has dropped
        if stale.endswith(".sha256") and stale[:-len(".sha256")] not in kept:
          os.remove(os.path.join(self._segment_dir(name), stale))
    except Exception as e:  # noqa: BLE001  -- a full disk reaches us as OSError or as tensorstore's ValueError
      self._failed = True
      raise UserError(f"cannot write a checkpoint under {self.directory!r} ({_reason(e)}); free space and rerun "
                      "the same command to resume") from None

  def restore(self, name: str, template, end_epoch: int):
    """(state, history, training seconds) from the newest readable checkpoint at or before `end_epoch`, or None.

    A checkpoint that fails to read (corrupted, truncated) is skipped with a warning and the one
    before it is used; half-written ones are never listed by Orbax.
    """
    manager = self._manager(name)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template.replace(rng=jax.random.key_data(template.rng)))
    for step in sorted((s for s in manager.all_steps() if s <= end_epoch), reverse=True):
      verified = _verify(self._step_dir(name, step), self._checksum(name, step))
      if verified is False:
        logging.warning("checkpoint %s of %s is corrupted (its files do not match the checksum saved with "
                        "them); using the one before it", step, name)
        continue
      restored, error = None, None
      for layout, lift in ((abstract, lambda state: state), *_older_layouts(abstract)):
        try:
          with _quiet():
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(layout),
                                                                     history=ocp.args.JsonRestore()))
          break
        except Exception as e:  # noqa: BLE001  -- any unreadable checkpoint: fall back to the previous one
          error = error or e
      if restored is None:
        self._failed = True
        logging.warning("checkpoint %s of %s is unreadable (%s: %s); using the one before it", step, name,
                        type(error).__name__, _first_line(error)[:200])
        continue
      state = lift(restored["state"])
      if jax.process_count() > 1:
        # Orbax restores onto this process's device only, and a compiled step over the global mesh refuses
        # arrays committed there; as fresh uncommitted arrays they are placed like any new state.
        state = jax.tree.map(lambda a: jax.numpy.asarray(np.asarray(a)), state)
      saved = restored["history"]   # a checkpoint written before the seconds were kept holds the bare rows
      rows, seconds = (saved["rows"], saved["seconds"]) if isinstance(saved, dict) else (saved, 0.0)
      return state.replace(rng=jax.random.wrap_key_data(state.rng)), list(rows), float(seconds)
    return None

  def close(self) -> None:
    """Waits for the pending writes and closes every segment's manager."""
    for manager in self._managers.values():
      manager.close()
    if self._undo_containment is not None and not self._failed:
      self._undo_containment()
    self._undo_containment = None


def _older_layouts(abstract) -> list[tuple]:
  """(abstract state, lift to today's layout) for each older layout a checkpoint of `abstract` may have.

  Checkpoints written before the Trainer's optimizer became one optax transformation, learning rate
  included (`state.config_optimizer`), hold only the direction's state: the learning rate was applied by
  hand. Today's state adds the schedule's count (optax.ScaleByScheduleState), which every step sets from
  the global step (`state.at_step`), so the old state lifted with that count resumes the same run.
  """
  opt_state = getattr(abstract, "opt_state", None)
  if not (isinstance(opt_state, tuple) and len(opt_state) == 2
          and isinstance(opt_state[1], optax.ScaleByScheduleState)):
    return []
  def lift(state):
    return state.replace(opt_state=(state.opt_state, optax.ScaleByScheduleState(count=state.step)))
  return [(abstract.replace(opt_state=opt_state[0]), lift)]


def check_compatible(saved_params, model_params, path: str) -> None:
  """Refuse a checkpoint whose parameter tree differs from the model's, naming the first mismatch."""
  saved = {name: tuple(np.shape(x)) for name, x in named_leaves(saved_params)}
  model = {name: tuple(np.shape(x)) for name, x in named_leaves(model_params)}
  # A ticket saved before checksums has no file list (a verified list without model.json: not a rebuilt
  # ticket), so a lost model.json shows only as narrower layers.
  listed = (_checksum_lines(os.path.join(path, CHECKSUM)) or [])[1:]
  rebuilt = "" if listed or os.path.exists(os.path.join(path, METADATA)) else (
      f"; if it is a rebuilt (slimming, early_bird) ticket, its {METADATA} is missing: {_RESTORE_METADATA}")
  for name in sorted(set(saved) | set(model)):
    if saved.get(name) != model.get(name):
      raise UserError(f"the checkpoint at {path!r} does not fit config.model: {name} is "
                      f"{saved.get(name, 'absent')} there and {model.get(name, 'absent')} in the model{rebuilt}")


def write_atomic(path: str, text: str) -> None:
  """Write to a temporary file in the same directory, then rename: readers never see half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
