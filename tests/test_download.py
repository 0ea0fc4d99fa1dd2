"""Fetching data sets from a real HTTP server on 127.0.0.1 that serves the MNIST files of ../shared/data/mnist.

The shared files were rebuilt losslessly from PNGs, so their bytes differ from the published archives: the tests
give their sha256 sums (from ../shared/data/README.md) through config.data.checksums, and one test shows the
published sums reject them. No test reaches outside the machine.
"""

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import ml_collections
import numpy as np
import pooch
import pytest
import tqdm

from lth_jax.data import download, idx, registry
from lth_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
CIFAR10_IMAGES = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-images.tar.gz"
SHARED_SHA256 = """\
cfeddb84311ecf044fc6a5b0f6ee8a24d265d4e83e388400186eb114082f4209  mnist/t10k-images-idx3-ubyte.gz
e41c74e484045d39b462a7790a4af51301bd9b0b24f0154798d713ec68c45920  mnist/t10k-labels-idx1-ubyte.gz
db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19  mnist/train-images-idx3-ubyte.gz
51fc562b6747b666fbf6e84ce29d43c3cb5f9c388c664d43b33f02095313405a  mnist/train-labels-idx1-ubyte.gz
"""
pytestmark = pytest.mark.skipif(not MNIST.is_dir(), reason="../shared/data/mnist is absent")


class Quiet(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


class CutShort(Quiet):
  """Announces the whole file but sends half of it and hangs up: an interrupted download."""
  requests: list[str] = []

  def do_GET(self):
    CutShort.requests.append(self.path)
    data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
    self.send_response(200)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data[:len(data) // 2])


@pytest.fixture
def serve():
  """serve(directory, handler=Quiet) -> base URL; every server is stopped at the end of the test."""
  servers = []

  def start(directory, handler=Quiet):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append(server)
    return f"http://127.0.0.1:{server.server_address[1]}/", server

  yield start
  for server in servers:
    server.shutdown()
    server.server_close()


@pytest.fixture
def checksums(tmp_path):
  path = tmp_path / "SHA256SUMS"
  path.write_text(SHARED_SHA256)
  return path


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
  monkeypatch.setattr(pooch.core, "time", types.SimpleNamespace(sleep=lambda seconds: None))   # between retries
  monkeypatch.delenv(download.MIRROR_ENV, raising=False)
  monkeypatch.delenv(download.CHECKSUMS_ENV, raising=False)


def data_config(cache, mirror, checksums=""):
  return ml_collections.ConfigDict({"cache_dir": str(cache), "mirror": mirror, "checksums": str(checksums)})


def broken_copy(tmp_path, change):
  """A copy of the MNIST files whose train labels `change(bytes)` returns."""
  served = tmp_path / "served"
  shutil.copytree(MNIST, served)
  labels = served / "train-labels-idx1-ubyte.gz"
  data = labels.read_bytes()
  labels.chmod(0o644)
  labels.write_bytes(change(data))
  return served


def assert_nothing_trusted(cache, bad="train-labels-idx1-ubyte.gz"):
  """No file of the bad name and nothing half-written: whatever is left is a whole, good file of that name."""
  left = sorted((cache / "mnist").iterdir())
  assert bad not in [p.name for p in left], left
  for path in left:
    assert (MNIST / path.name).is_file() and path.read_bytes() == (MNIST / path.name).read_bytes(), path.name


def test_first_run_downloads_and_caches_then_the_cache_is_read_without_the_server(tmp_path, serve, checksums):
  url, server = serve(MNIST)
  cache = tmp_path / "cache"
  folder = download.fetch("mnist", data_config(cache, url, checksums))
  assert folder == cache / "mnist"
  assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in MNIST.iterdir())
  for path in MNIST.iterdir():
    assert (folder / path.name).read_bytes() == path.read_bytes()
  server.shutdown()
  server.server_close()
  assert download.fetch("mnist", data_config(cache, url, checksums)) == folder
  # The data source reads the cache when config.data.dir is empty.
  config = ml_collections.ConfigDict({"name": "mnist", "dir": "", "val_fraction": 5000 / 60000, "subset": 0,
                                      "test_subset": 0, "cache_dir": str(cache), "mirror": url,
                                      "checksums": str(checksums)})
  dataset = registry.load(config, seed=0)
  assert (len(dataset.train[1]), len(dataset.val[1]), len(dataset.test[1])) == (55000, 5000, 10000)
  np.testing.assert_array_equal(np.sort(dataset.test[1]), np.sort(idx.read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")))


@pytest.mark.parametrize("change", [lambda data: data[:len(data) // 2],
                                    lambda data: data[:100] + bytes([data[100] ^ 1]) + data[101:]],
                         ids=["truncated", "one_changed_byte"])
def test_a_bad_file_ends_in_one_line_and_leaves_nothing_to_trust(tmp_path, serve, checksums, change):
  url, _ = serve(broken_copy(tmp_path, change))
  cache = tmp_path / "cache"
  with pytest.raises(UserError) as error:
    download.fetch("mnist", data_config(cache, url, checksums))
  message = str(error.value)
  assert "\n" not in message and message.startswith("mnist: ")
  assert f"{url}train-labels-idx1-ubyte.gz does not match its checksum" in message
  assert "config.data.dir" in message
  assert "config.data.checksums" in message   # what a mirror of repacked files needs
  assert_nothing_trusted(cache)


def test_the_download_bar_is_labelled_with_the_file_name_not_the_temporary_one(tmp_path, serve, checksums,
                                                                              monkeypatch):
  labels = []

  class Bar(tqdm.tqdm):
    def __init__(self, *args, desc="", **kwargs):
      labels.append(desc)
      super().__init__(*args, desc=desc, **kwargs)

  monkeypatch.setattr(download.tqdm, "tqdm", Bar)
  url, _ = serve(MNIST)
  download.fetch("mnist", data_config(tmp_path / "cache", url, checksums))
  assert sorted(labels) == sorted(f"mnist {path.name}" for path in MNIST.iterdir())


def test_an_interrupted_download_is_retried_then_reported(tmp_path, serve, checksums, monkeypatch):
  monkeypatch.setattr(CutShort, "requests", [])
  url, _ = serve(MNIST, CutShort)
  cache = tmp_path / "cache"
  with pytest.raises(UserError) as error:
    download.fetch("mnist", data_config(cache, url, checksums))
  assert "cannot download train-images-idx3-ubyte.gz" in str(error.value) and "IncompleteRead" in str(error.value)
  assert "\n" not in str(error.value)
  assert CutShort.requests == ["/train-images-idx3-ubyte.gz"] * 3   # 3 attempts (README), then the error
  assert list((cache / "mnist").iterdir()) == []


def test_a_file_url_mirror_is_copied_and_verified(tmp_path, checksums):
  cache = tmp_path / "cache"
  folder = download.fetch("mnist", data_config(cache, MNIST.as_uri() + "/", checksums))
  for path in MNIST.iterdir():
    assert (folder / path.name).read_bytes() == path.read_bytes()
  with pytest.raises(UserError, match="train-images-idx3-ubyte.gz does not match its checksum .* expected "
                                      "sha256:440fcabf"):
    download.fetch("mnist", data_config(tmp_path / "published", MNIST.as_uri()))


def test_the_published_checksums_reject_the_rebuilt_shared_files(tmp_path, serve):
  url, _ = serve(MNIST)
  with pytest.raises(UserError, match="train-images-idx3-ubyte.gz does not match its checksum .* expected "
                                      "sha256:440fcabf"):
    download.fetch("mnist", data_config(tmp_path / "cache", url))
  assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_a_corrupted_cache_file_is_fetched_again(tmp_path, serve, checksums):
  url, _ = serve(MNIST)
  cache = tmp_path / "cache"
  folder = download.fetch("mnist", data_config(cache, url, checksums))
  (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
  download.fetch("mnist", data_config(cache, url, checksums))
  assert (folder / "t10k-labels-idx1-ubyte.gz").read_bytes() == (MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()


def dead_url():
  with socket.socket() as probe:  # a port nobody listens on once the probe is closed
    probe.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{probe.getsockname()[1]}/"


def run_main(*args, env=()):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), **dict(env)}
  return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


def test_a_dead_server_exits_2_with_one_line(tmp_path):
  url = dead_url()
  proc = run_main("--config=configs/mnist_lenet.py", "--config.data.dir=", f"--config.data.cache_dir={tmp_path}",
                  f"--config.workdir={tmp_path / 'work'}", env={download.MIRROR_ENV: url})
  assert proc.returncode == 2, proc.stderr[-2000:]
  line, = proc.stderr.strip().splitlines()
  assert f"mnist: cannot download train-images-idx3-ubyte.gz ({url}train-images-idx3-ubyte.gz:" in line
  assert "config.data.mirror" in line and "config.data.dir" in line
  assert list((tmp_path / "mnist").iterdir()) == []


def test_mnist_lenet_fetches_through_the_mirror_and_runs(tmp_path, serve, checksums):
  url, _ = serve(MNIST)
  proc = run_main("--config=configs/mnist_lenet.py", f"--config.data.cache_dir={tmp_path / 'cache'}",
                  f"--config.data.checksums={checksums}", "--config.data.subset=2000", "--config.train.steps=0",
                  "--config.train.epochs=1",
                  "--config.iterative.rounds=1", "--config.iterative.random_control_every=0",
                  f"--config.workdir={tmp_path / 'work'}", env={download.MIRROR_ENV: url})
  assert proc.returncode == 0, proc.stderr[-2000:]
  runs = json.loads((tmp_path / "work" / "results.json").read_text())["runs"]
  assert [r["method"] for r in runs] == ["dense", "iterative"] and runs[1]["test_accuracy"] > 0.7


@pytest.mark.parametrize("value", ["ftp://host/", "127.0.0.1:8000"])
def test_a_mirror_that_is_not_a_url_is_refused(value):
  config = ml_collections.ConfigDict({"mirror": value, "checksums": ""})
  with pytest.raises(UserError, match=r"config.data.mirror \(or \$LTH_JAX_DATA_MIRROR\)="):
    download.validate(config)


@pytest.mark.skipif(not CIFAR10_IMAGES.is_file(), reason="../shared/data/cifar10 is absent")
def test_cifar10_recognises_an_image_folder_archive():
  config = ml_collections.ConfigDict({"name": "cifar10", "dir": str(CIFAR10_IMAGES), "val_fraction": 0.1,
                                      "subset": 0, "test_subset": 0})
  dataset = registry.load(config, seed=0)
  assert dataset.name == "cifar10" and dataset.num_classes == 10
  assert (len(dataset.train[1]), len(dataset.val[1]), len(dataset.test[1])) == (45000, 5000, 10000)
  assert dataset.input_shape == (32, 32, 3)
