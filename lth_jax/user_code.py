"""Objects a config names by import path, "pkg.module:Name": a user's own model class or data source.

`load` imports the module and reads the attribute (dotted for nested ones: "pkg.nets:Zoo.Small"); every
way that can fail (a malformed path, a module that is not importable or raises while it is imported, a
missing attribute) is a UserError naming the config key, one line.
"""

import importlib

from lth_jax.errors import UserError


def is_import_path(name) -> bool:
  """Whether a config's name is "pkg.module:Name" rather than a registered name (which holds no colon)."""
  return isinstance(name, str) and ":" in name


def load(path: str, key: str):
  """The object at `path` ("pkg.module:Name"); `key` is the config key that names it, e.g. "config.model.name"."""
  module_name, _, attribute = path.partition(":")
  if not module_name or not attribute or ":" in attribute:
    raise UserError(f"{key}={path!r} must be 'pkg.module:Name' (a module importable from the current "
                    "directory or PYTHONPATH, then the name in it)")
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # noqa: BLE001  -- whatever the user's module raises while it is imported
    raise UserError(f"{key}={path!r}: cannot import {module_name} ({first_line(e)}); is it on PYTHONPATH?") from None
  found = module
  for part in attribute.split("."):
    if not hasattr(found, part):
      raise UserError(f"{key}={path!r}: {module_name} has no attribute {attribute!r}")
    found = getattr(found, part)
  return found


def first_line(error: BaseException) -> str:
  """'TypeError: the message's first line': how an exception of a user's code appears in a one-line error."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def kind(obj) -> str:
  """What `obj` is, for an error message: 'the class Dataset', 'an int', 'a Net'."""
  if isinstance(obj, type):
    return f"the class {obj.__name__}"
  name = type(obj).__name__
  return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"
