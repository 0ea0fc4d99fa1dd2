"""One progress bar for a whole experiment: epochs trained, summed over every run, with an ETA.

Methods plan their training only roughly (they are programs that decide as they go), so the total is
what `lth_jax.methods.registry.planned_epochs` reports, or None -- a bar that counts without an ETA --
when a method cannot know it in advance (early_bird stops when its mask settles). Each epoch counts
once per state trained, so vmapped tickets and seeds advance it by their number.
"""

import sys

import tqdm
from absl import logging as absl_logging


class Progress:
  """`advance(epochs, what)` after every epoch; shown only when `enabled` and the stream is a terminal."""

  def __init__(self, total: int | None, enabled: bool = True, file=None):
    file = sys.stderr if file is None else file
    # disable=None: tqdm stays quiet unless the stream is a terminal (CI, log files)
    self._bar = tqdm.tqdm(total=total or None, unit="epoch", desc="experiment", file=file, dynamic_ncols=True,
                          disable=None if enabled else True)
    self._handler, self._stream = None, None
    if not self._bar.disable:
      self._log_above(file)

  @property
  def shown(self) -> bool:
    """Whether the bar is drawn (enabled, on a terminal)."""
    return not self._bar.disable

  def advance(self, epochs: int, what: str = "") -> None:
    """Counts `epochs` more epochs trained; `what` (a segment's name) labels the bar."""
    if what:
      self._bar.set_description_str(what, refresh=False)
    self._bar.update(epochs)

  def close(self) -> None:
    """Removes the bar and gives the log its stream back."""
    self._bar.close()
    if self._handler is not None:
      self._handler.stream = self._stream

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *_) -> None:
    self.close()

  def _log_above(self, file) -> None:
    """Route absl's log lines through tqdm.write, so a log line clears the bar instead of running into it."""
    handler = getattr(absl_logging.get_absl_handler(), "python_handler", None)
    if handler is None or getattr(handler, "stream", None) is not file:
      return
    self._handler, self._stream = handler, handler.stream
    handler.stream = _AboveTheBar(file)


class _AboveTheBar:
  def __init__(self, file):
    self._file = file

  def write(self, text: str) -> None:
    tqdm.tqdm.write(text, file=self._file, end="")

  def flush(self) -> None:
    self._file.flush()

  def isatty(self) -> bool:
    return self._file.isatty()
