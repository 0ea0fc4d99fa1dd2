import importlib.util
import json

from lth_jax import bench


def test_quick_lenet_reports_positive_throughputs(tmp_path):
  # The torch peer only where the bench extra is installed; CI runs without it.
  with_torch = importlib.util.find_spec("torch") is not None
  results = bench.run(("lenet300_100",), quick=True, with_torch=with_torch, with_end_to_end=False,
                      out_dir=str(tmp_path))
  lenet = results["models"]["lenet300_100"]
  jax_part = lenet["lth_jax"]
  for key in ("dense", "masked", "vmap", "sequential", "step_jit_dense"):
    assert jax_part[key]["img_s"] > 0, key
  assert abs(jax_part["sparsity"] - bench.SPARSITY) < 1e-3
  if with_torch:
    assert lenet["torch"]["dense"]["img_s"] > 0 and lenet["torch"]["masked"]["img_s"] > 0
    assert abs(lenet["torch"]["sparsity"] - bench.SPARSITY) < 1e-3
  assert json.loads((tmp_path / "results.json").read_text())["models"]["lenet300_100"]
  assert "| LeNet-300-100 |" in (tmp_path / "results.md").read_text()
