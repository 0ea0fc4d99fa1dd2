"""Errors a user can cause: the command line prints the message on one line and exits with status 2."""


class UserError(ValueError):
  """A bad config value, a missing file or an incompatible input. The message names the key and what is allowed.

  A ValueError, so library code that calls lth_jax outside the command line can catch it as one.
  """


def check(condition: bool, message) -> None:
  """`message`: the text, or a function returning it when it can only be built once the check failed."""
  if not condition:
    raise UserError(message() if callable(message) else message)


def require(condition: bool, message) -> None:
  """A library function's check of its own arguments: ValueError, not UserError, when `condition` is false.

  Library code (lth_jax.sparsity, lth_jax.metrics) speaks of its arguments; the command line checks its
  config keys before it calls the library and names the key itself (`check`).
  """
  if not condition:
    raise ValueError(message() if callable(message) else message)
