"""benchmarks/stream_throughput.py's core on a few synthetic images: the structure it writes (no timing asserted).

A small MLP stands in for ResNet-20 (compiling a convnet's step several times would take a minute on CPU); the
image folder is 3 classes of 8x8 PNGs, 12 training images (11 once val is held out), so 2 batches of 4 an
epoch, of which the run times 1.
"""

import pytest

from benchmarks import stream_throughput
from tests.helpers import write_image_folder

MLP = {"name": "mlp", "widths": (8,)}


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_run_reports_every_stage_both_pipelines_and_the_targets(tmp_path):
  write_image_folder(tmp_path / "images", size=(8, 8))
  result = stream_throughput.run(str(tmp_path / "images"), subset=0, steps=1, batch=4, repeats=1, model=MLP)
  meta = result["meta"]
  assert (meta["steps_timed"], meta["steps_per_epoch"], meta["scaled_down"]) == (1, 2, True)   # 1 of 2 batches
  assert {"cpu_model", "cpu_count", "jax", "load_avg_1m_range", "load_note", "load_avg_end"} <= set(meta)
  assert result["decode"]["images"] == 18 and result["decode"]["decode_s"] > 0
  stages = result["stages"]
  for name in stream_throughput.STAGE_LABELS:
    assert stages[name]["img_s"] > 0 and stages[name]["ms_per_batch"] > 0, name
  e2e = result["end_to_end"]
  for kind in stream_throughput.PIPELINES:
    assert e2e[kind]["img_s"] > 0 and len(e2e[kind]["epoch_s"]) == 1
  assert e2e["stream_over_memory"] > 0
  assert [t["met"] in (True, False) for t in result["targets"]] == [True, True]
  result["meta"]["command"] = "python benchmarks/stream_throughput.py --data images"
  table = stream_throughput.markdown(result)
  assert "| stream |" in table and "## Where the time goes" in table and "**Scaled down**" in table
