import os
import sys
import warnings

import pytest

# Tests run on the CPU with one device unless a test asks otherwise.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A reader that meets a cache entry another process is still writing (or was killed writing) recompiles, with a
# warning about the cache, not about the program: not a line a test should see (see pytest_configure).
_CACHE_WARNING = "Error reading persistent compilation cache entry"
warnings.filterwarnings("ignore", message=_CACHE_WARNING)


@pytest.hookimpl(trylast=True)   # after pytest's own, which makes the session's temporary directory
def pytest_configure(config):
  """One persistent JAX compilation cache for the session, its xdist workers and the main.py processes the tests
  start: the tests build the same small programs over and over, and one compiled once is read back. A cached
  executable is the one the compiler made, so no number changes; only time does. It lives under the session's
  temporary directory (pytest keeps the last three), so nothing outlives the runs that made it."""
  factory = getattr(config, "_tmp_path_factory", None)   # absent under -p no:tmpdir: no cache then
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ and not hasattr(config, "workerinput") and factory:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(factory.getbasetemp() / "jax_cache")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  previous = os.environ.get("PYTHONWARNINGS")
  if _CACHE_WARNING not in (previous or ""):
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [previous, f"ignore:{_CACHE_WARNING}"]))
