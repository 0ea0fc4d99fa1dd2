"""Early-Bird tickets (You et al. 2020): stop dense training once the channel mask stops changing.

After every epoch the caller computes the channel mask for the target ratio ({group: bool keep-array},
e.g. `group_criteria.channel_keep` by BatchNorm scale) and passes it to `EarlyBird.update`. The distance between two
masks is the normalised Hamming distance over all prunable channels (the fraction of channels on which
they disagree). The rule, exactly: at update t (from 0) the detector fires when it holds `window` earlier
masks (t >= window) and the distance from mask t to each of masks t-1 .. t-window is < epsilon (strictly),
i.e. their max is < epsilon. So it can fire at the earliest on the (window + 1)-th update.

The default window=4 is the paper's: the authors' code (GATECH-EIC/Early-Bird-Tickets) keeps a queue of 5
masks that includes the new one, i.e. 4 earlier masks, and draws the ticket when every distance is below
epsilon (their code rejects only distances > epsilon; we require < epsilon, as the paper's text). The
detector only looks at masks: plain Python state, independent of the model and the training loop.
"""

import math
from collections import deque

import numpy as np


def flatten(channel_keep) -> np.ndarray:
  """One bool vector over all prunable channels, groups in sorted name order (the same for every mask)."""
  names = sorted(channel_keep)
  return np.concatenate([np.asarray(channel_keep[k], bool).ravel() for k in names])


def distance(mask_a, mask_b) -> float:
  """Normalised Hamming distance between two channel masks (dicts or flat vectors) of the same layers."""
  a = flatten(mask_a) if isinstance(mask_a, dict) else np.asarray(mask_a, bool)
  b = flatten(mask_b) if isinstance(mask_b, dict) else np.asarray(mask_b, bool)
  if a.shape != b.shape:
    raise ValueError(f"channel masks of {a.size} and {b.size} channels cannot be compared")
  return float(np.count_nonzero(a != b)) / a.size if a.size else 0.0


class EarlyBird:
  """Feed one channel mask per epoch to `update`; it returns True once the ticket has been drawn.

  `distances[t]` is max over the window of the distances from mask t (nan while fewer than `window`
  earlier masks exist), for plotting; `ticket_epoch` is the first update that fired, `ticket` its mask.
  """

  def __init__(self, window: int = 4, epsilon: float = 0.1):
    if window < 1 or epsilon <= 0:
      raise ValueError(f"Early-Bird needs window >= 1 and epsilon > 0, got {window} and {epsilon}")
    self.window, self.epsilon = window, epsilon
    self.previous: deque = deque(maxlen=window)  # the last `window` flat masks, oldest first
    self.distances: list[float] = []
    self.ticket_epoch = None
    self.ticket = None

  def update(self, channel_keep) -> bool:
    """True when this mask is within epsilon of every one of the last `window` masks.

    It keeps returning the rule's value for later masks; `ticket_epoch` remembers the first firing.
    """
    mask = flatten(channel_keep)
    if len(self.previous) == self.window:
      farthest = max(distance(mask, old) for old in self.previous)
    else:
      farthest = math.nan
    self.previous.append(mask)
    self.distances.append(farthest)
    fired = farthest < self.epsilon  # False for nan
    if fired and self.ticket_epoch is None:
      self.ticket_epoch, self.ticket = len(self.distances) - 1, dict(channel_keep)
    return fired


def first_ticket(channel_masks, window: int = 4, epsilon: float = 0.1):
  """(epoch of the first ticket or None, max-window distance per epoch) over a list of channel masks."""
  detector = EarlyBird(window, epsilon)
  for mask in channel_masks:
    detector.update(mask)
  return detector.ticket_epoch, detector.distances
