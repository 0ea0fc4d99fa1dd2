"""lth_jax: train, prune and compare.  python main.py --config=configs/default.py --config.method=iterative"""

import sys

from absl import app

from lth_jax import cli

_DEFAULT_CONFIG = "configs/default.py"
_CONFIG = cli.define_config(sys.argv, _DEFAULT_CONFIG)


def main(argv):
  del argv  # absl strips the flags from it; the report records the full command line
  cli.execute(_CONFIG.value, sys.argv)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
