import importlib.util
import json
import math

import jax

from benchmarks import bench
from tests.helpers import slow


@slow   # CI budget: a whole quick benchmark run; the smoke tests of the other benchmarks stay in CI
def test_quick_lenet_reports_positive_throughputs(tmp_path):
  # The torch peer only where the bench extra is installed; CI runs without it.
  with_torch = importlib.util.find_spec("torch") is not None
  # No cap on the measured time: on a slow machine the vmapped and sequential figures are still measured,
  # so what is asserted below does not depend on the machine's speed.
  results = bench.run(("lenet300_100",), quick=True, with_torch=with_torch, with_end_to_end=False,
                      cap_s=math.inf, out_dir=str(tmp_path))
  lenet = results["models"]["lenet300_100"]
  jax_part = lenet["lth_jax"]
  # loop="auto" resolves by backend: one jitted step per batch on CPU, one lax.scan elsewhere.
  loop = "steps" if jax.default_backend() == "cpu" else "scan"
  assert jax_part["loop"] == loop
  for key in ("dense", "masked", "vmap", "sequential"):
    assert jax_part[key]["img_s"] > 0, key
  assert len(jax_part["dense"]["epoch_s"]) == len(jax_part["masked"]["epoch_s"]) == bench.QUICK["lenet300_100"].repeats
  assert not jax_part["sequential"]["derived"]   # no cap: measured, not derived
  assert jax_part["masked_over_dense"] > 0 and jax_part["vmap_speedup"] > 0 and jax_part["first_epoch_s"] > 0
  for every in ("every_1", "every_100"):   # RigL's step beside a dense one
    assert jax_part["rigl"][every]["img_s"] > 0 and jax_part["rigl"][every]["over_dense"] > 0
  loops = jax_part["loops"]
  assert loops["scan"]["img_s"] > 0 and loops["steps"]["img_s"] > 0 and loops["scan"]["compile_s"] > 0
  assert loops["scan_over_steps"] == loops["scan"]["img_s"] / loops["steps"]["img_s"]
  assert abs(jax_part["sparsity"] - bench.SPARSITY) < 1e-3
  if with_torch:
    assert lenet["torch"]["dense"]["img_s"] > 0 and lenet["torch"]["masked"]["img_s"] > 0
    assert lenet["torch"]["masked_1thread"]["img_s"] > 0
    assert abs(lenet["torch"]["sparsity"] - bench.SPARSITY) < 1e-3
    assert lenet["lth_jax_over_torch"] > 0
  assert [t["target"] for t in results["targets"]][0].startswith("LeNet-300-100: lth_jax masked within 3%")
  written = json.loads((tmp_path / "results.json").read_text())
  assert written["models"]["lenet300_100"]["lth_jax"]["loop"] == loop
  markdown = (tmp_path / "results.md").read_text()
  assert "| LeNet-300-100 |" in markdown and f"loop: {loop}" in markdown and "## What limits it" in markdown
  assert "RigL step vs dense step" in markdown
