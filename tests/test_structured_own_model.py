"""examples/structured_own_model.py, scaled down: it runs, and halving every channel group quarters its weights.

The hand count of ResidualCNN on 8x8x1 digits (bias-free 3x3 convs, BatchNorm scale + bias, Dense with
bias; the stride-2 conv3 leaves 4x4 positions for the flatten): at widths (stem/stream, conv1, conv3,
hidden) = (a, b, c, d), params = 9a + 2a + 9ab + 2b + 9ba + 2a + 9ac + 2c + 16cd + d + 10d + 10.
"""

import re
import subprocess
import sys

from tests.helpers import ENV, ROOT


def residual_cnn_params(a: int, b: int, c: int, d: int) -> int:
  convs = 9 * a + 9 * a * b + 9 * b * a + 9 * a * c
  batchnorms = 2 * (a + b + a + c)
  return convs + batchnorms + 16 * c * d + d + 10 * d + 10


def test_example_runs_and_prints_the_hand_counted_params():
  done = subprocess.run([sys.executable, str(ROOT / "examples" / "structured_own_model.py"), "--steps", "3",
                         "--retrain-steps", "2"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  counts = re.search(r"parameters: ([\d,]+) full -> ([\d,]+) narrow", done.stdout)
  full, narrow = (int(n.replace(",", "")) for n in counts.groups())
  assert full == residual_cnn_params(32, 32, 64, 64) == 103722
  assert narrow == residual_cnn_params(16, 16, 32, 32)   # every group keeps half its channels
  assert re.search(r"forward latency .*: [\d.]+ ms full -> [\d.]+ ms narrow", done.stdout)
  # the narrow program computes what the full one does with the pruned channels zeroed
  assert float(re.search(r"max \|difference\| (\S+)", done.stdout).group(1)) < 1e-4
