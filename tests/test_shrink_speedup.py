"""benchmarks/shrink_speedup.py's core on a tiny VGG: the rows it writes, counted by hand.

VGG-11 with every conv 4 wide (config D's pools: 32, 16, 8, 8, 4, 4, 2, 2 pixels per side at the eight
convs), half the channels removed: every group keeps 2 of its 4 channels.
"""

import pytest

from benchmarks import shrink_speedup

TINY = {"vgg11": {"widths": (4,) * 8}}
SIDES = (32, 16, 8, 8, 4, 4, 2, 2)   # the output side of each conv


def vgg_counts(width: int) -> tuple[int, int]:
  """(params, multiply-adds per image) of the tiny VGG-11 with every conv `width` wide, 10 classes."""
  ins = (3,) + (width,) * 7
  params = sum(9 * c * width + 2 * width for c in ins) + width * 10 + 10   # kernels, BN scale + bias, output
  flops = sum(side * side * 9 * c * width for side, c in zip(SIDES, ins)) + width * 10
  return params, flops


def test_rows_hold_the_hand_counted_params_and_flop_ratio():
  result = shrink_speedup.run(["vgg11"], (0.5,), batch=2, repeats=1, with_torch=False, model_kwargs=TINY)
  full, half = result["rows"]
  assert (full["fraction"], half["fraction"]) == (0.0, 0.5)
  assert (full["params"], full["flops"]) == vgg_counts(4) == (1230, 171688)
  assert (half["params"], half["flops"]) == vgg_counts(2)
  assert half["flop_speedup"] == pytest.approx(171688 / 70580)
  assert (half["channels_kept"], half["channels"]) == (16, 32)
  for row in (full, half):
    assert {"infer_ms", "train_ms", "infer_speedup", "train_speedup"} <= set(row)
    assert row["infer_ms"] > 0 and row["train_ms"] > 0
  assert full["infer_speedup"] == full["train_speedup"] == 1.0
  assert {"cpu_model", "cpu_count", "batch", "repeats", "load_note"} <= set(result["meta"])
  table = shrink_speedup.markdown(result["rows"], {**result["meta"], "command": "python benchmarks/shrink_speedup.py"})
  assert "| vgg11 | 50% | 368 |" in table


def resnet20_params(w: int) -> int:
  """ResNet-20 (option-B 1x1 projections) with stage widths w, 2w, 4w, 10 classes: convs, BatchNorms, output."""
  def stage(cin, c):   # three basic blocks, the first projecting cin -> c when they differ
    first = 9 * cin * c + 9 * c * c + 4 * c + (cin * c + 2 * c if cin != c else 0)
    return first + 2 * (18 * c * c + 4 * c)
  return 27 * w + 2 * w + stage(w, w) + stage(w, 2 * w) + stage(2 * w, 4 * w) + 40 * w + 10


def test_torch_pruning_halves_resnet20_to_the_hand_count():
  pytest.importorskip("torch_pruning")
  assert resnet20_params(16) == 272474   # the count lth_jax's resnet module states
  rows = shrink_speedup.torch_rows("resnet20", (0.5,), batch=2, repeats=1, load=shrink_speedup.Load())
  assert [r["fraction"] for r in rows] == [0.0, 0.5]
  assert [r["params"] for r in rows] == [resnet20_params(16), resnet20_params(8)]
  assert rows[1]["infer_ms"] > 0 and rows[1]["train_ms"] > 0 and rows[0]["train_speedup"] == 1.0
