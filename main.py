"""lth_jax: train, prune and compare.  python main.py --config=configs/default.py --config.method=iterative"""

import errno
import sys

from absl import app

from lth_jax import cli
from lth_jax.errors import UserError

_DEFAULT_CONFIG = "configs/default.py"
_CONFIG = cli.define_config(sys.argv, _DEFAULT_CONFIG)


def main(argv):
  del argv  # absl strips the flags from it; the report records the full command line
  try:
    cli.run(_CONFIG.value, cli.command_line(sys.argv))
  except UserError as e:
    cli.fail(str(e))
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
      raise
    where = f" ({e.filename})" if e.filename else ""   # a failed flush at close names no file
    cli.fail(f"cannot write under config.workdir={_CONFIG.value.workdir!r}: {e.strerror}{where}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
