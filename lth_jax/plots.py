"""The one way results' figures are drawn: a headless matplotlib and a context manager per figure."""

import contextlib

import matplotlib

matplotlib.use("Agg")   # reports are written on machines without a display
import matplotlib.pyplot as plt  # noqa: E402


@contextlib.contextmanager
def figure(path: str, xlabel: str, ylabel: str, size=(6, 4), legend_size: float | None = 8, grid: bool = True,
           legend_columns: int = 1):
  """Yields the axes to draw on; labels, legend and grid them, then saves to `path` and frees the figure."""
  fig, ax = plt.subplots(figsize=size)
  try:
    yield ax
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend_size is not None and ax.get_legend_handles_labels()[0]:   # no empty legend box
      ax.legend(fontsize=legend_size, ncol=legend_columns)
    if grid:
      ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
  finally:
    plt.close(fig)
