"""Saving and reloading tickets with Orbax: params, BatchNorm statistics, masks and the rewind weights."""

import contextlib
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from absl import logging

from lth_jax.errors import UserError


@contextlib.contextmanager
def _quiet():
  """Orbax logs several INFO lines per save through absl; keep the run's log readable."""
  level = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  try:
    yield
  finally:
    logging.set_verbosity(level)


def save_ticket(path: str, state, rewind_params) -> None:
  """Writes {params, batch_stats, masks, rewind_params} of a trained ticket to `path` (a new directory)."""
  tree = {"params": state.params, "batch_stats": state.batch_stats, "masks": state.masks,
          "rewind_params": rewind_params}
  with _quiet(), ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.abspath(path), tree, force=True)


def load_ticket(path: str) -> dict:
  """The tree `save_ticket` wrote, as numpy-backed jax arrays."""
  if not os.path.isdir(path):
    raise UserError(f"no ticket at {path!r}: expected a directory written by lth_jax (workdir/tickets/...)")
  with _quiet(), ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.abspath(path))


def export_npz(path: str, params, masks) -> None:
  """The masked weights as a plain .npz, one array per leaf name ('hidden_0/kernel')."""
  from lth_jax.masks import named_leaves  # local: keep this module importable on its own
  masked = jax.tree.map(lambda p, m: np.asarray(p * m), params, masks)
  np.savez(path, **dict(named_leaves(masked)))
