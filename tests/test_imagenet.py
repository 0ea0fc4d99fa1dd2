"""ImageNet-ready: configs/imagenet_resnet50.py end to end on 4 simulated devices, and images of any size decoded on
demand (data.image_size, lth_jax.data.lazy): torchvision's transforms, an image folder listed not decoded, streamed
batches whose random crops depend only on the seed, the iteration and the image. Bad inputs (a missing or empty
folder, an unreadable JPEG, the keys out of range) are cases of tests/test_census.py.

The tree below has ImageNet's layout (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) at 64x64 and a little larger; the
runs crop it to 56x56 (ImageNet's 224 from 256, scaled by 1/4).
"""

import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from lth_jax import data
from lth_jax.config import base
from lth_jax.data import files, lazy, stream
from tests.helpers import ENV, ROOT, slow

CLASSES = ("n01440764", "n01443537", "n01484850")


def write_tree(root, train=4, val=2):
  """3 classes of RGB JPEGs, 64x64 up to 72x68 (sizes differ, as ImageNet's do), one greyscale image."""
  rng = np.random.default_rng(0)
  for split, n in (("train", train), ("val", val)):
    for c, wnid in enumerate(CLASSES):
      (root / split / wnid).mkdir(parents=True)
      for i in range(n):
        shape = (64 + 8 * (i % 2), 64 + 4 * (i % 3), 3)
        pixels = np.clip(rng.normal(60 + 60 * c, 40, shape), 0, 255).astype(np.uint8)
        image = PIL.Image.fromarray(pixels)
        if (split, c, i) == ("train", 0, 0):
          image = image.convert("L")
        image.save(root / split / wnid / f"{wnid}_{i}.JPEG")
  return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  return write_tree(tmp_path_factory.mktemp("imagenet") / "imagenet")


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  return tmp_path / "cache" / "lth_jax"


def lazy_config(root, **overrides):
  config = base().data
  config.update(dict(name="image_folder", dir=str(root), image_size=56, val_fraction=0.25, workers=2))
  config.update(overrides)
  return config


# ----------------------------------------------------------------------------------------------- transforms


def test_center_crop_is_torchvision_resize_then_center_crop():
  image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), np.uint8))
  got = lazy.Crops(size=56, resize=64).center(image)
  # Resize(64): the shorter side (60) to 64, the longer to int(64 * 90 / 60) = 96; CenterCrop(56): offsets
  # round((64 - 56) / 2) = 4 and round((96 - 56) / 2) = 20.
  want = np.asarray(image.resize((96, 64), PIL.Image.Resampling.BILINEAR).crop((20, 4, 76, 60)))
  assert got.dtype == np.uint8 and got.shape == (56, 56, 3)
  np.testing.assert_array_equal(got, want)


def test_random_crops_keep_to_their_scale_and_ratio_and_repeat_under_their_seed():
  crops = lazy.Crops(size=16, resize=18, scale=(0.1, 1.0), ratio=(0.8, 1.25))
  for seed in range(200):
    top, left, h, w = crops._window(60, 90, np.random.default_rng(seed))
    assert 0 <= top <= 60 - h and 0 <= left <= 90 - w
    assert 0.1 * 5400 * 0.9 <= h * w <= 5400 and 0.8 / 1.1 <= w / h <= 1.25 * 1.1   # rounding to pixels
  # A strip no allowed window fits: ten tries fail, then the centre crop of the nearest allowed aspect.
  assert crops._window(4, 100, np.random.default_rng(0)) == (0, 47, 4, 5)
  image = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 90, 3), np.uint8))
  first, again = (crops.random(image, np.random.default_rng(7)) for _ in range(2))
  np.testing.assert_array_equal(first, again)
  assert first.shape == (16, 16, 3)
  others = [crops.random(image, np.random.default_rng(s)) for s in range(8)]
  assert len({o.tobytes() for o in others}) == 8


# --------------------------------------------------------------------------------------- the image folder


def test_an_image_folder_of_any_size_is_listed_not_decoded(tree, cache_home, monkeypatch):
  dataset = data.load(lazy_config(tree), seed=0)
  (x, y), (x_val, y_val), (x_test, y_test) = dataset.train, dataset.val, dataset.test
  assert isinstance(x, lazy.LazyImages) and dataset.input_shape == (56, 56, 3) and dataset.num_classes == 3
  assert (len(x), len(x_val), len(x_test)) == (9, 3, 6)   # val: a quarter of train; test: ImageNet's val/
  np.testing.assert_array_equal(y_test, [0, 0, 1, 1, 2, 2])
  assert sorted(np.concatenate([y, y_val]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
  # Indexing decodes: one image, a slice, index arrays; the centre crop of the file itself; grey becomes RGB.
  first = PIL.Image.open(tree / "val" / CLASSES[0] / f"{CLASSES[0]}_0.JPEG").convert("RGB")
  np.testing.assert_array_equal(x_test[0], lazy.Crops(56, 64).center(first))
  assert x[:2].shape == (2, 56, 56, 3) and x[np.array([[0, 1], [2, 3]])].shape == (2, 2, 56, 56, 3)
  np.testing.assert_array_equal(x_test[np.array([3, 0])][1], x_test[0])
  assert {x[i].shape for i in range(len(x))} == {(56, 56, 3)} and x.dtype == np.uint8
  # data.subset and data.test_subset keep the splits undecoded
  small = data.load(lazy_config(tree, subset=4, test_subset=2), seed=0)
  assert isinstance(small.train[0], lazy.LazyImages) and len(small.train[0]) == 4 and len(small.test[0]) == 2
  # the listing (and every header read) is cached like decoded images
  assert len(list(cache_home.glob("*.npz"))) == 1
  monkeypatch.setattr(files, "_index_image_tree", lambda *a, **k: pytest.fail("listed again"))
  np.testing.assert_array_equal(data.load(lazy_config(tree), seed=0).train[1], y)


def test_streamed_crops_depend_only_on_the_seed_the_iteration_and_the_image(tree):
  x, y = data.load(lazy_config(tree), seed=0).train
  rows = np.array([[3, 1, 4], [1, 5, 0]])

  def read(workers, steps):
    split = stream.Split(lazy.LazyImages(x.source, x.index, x.crops, x.seed, workers), y)
    return [bx for bx, _ in split.batches(rows, steps=steps)]

  one, three = read(1, [10, 11]), read(3, [10, 11])
  for a, b in zip(one, three, strict=True):
    np.testing.assert_array_equal(a, b)   # however many threads decode
  assert one[0].shape == (3, 56, 56, 3)
  assert not np.array_equal(one[0][1], one[1][0])       # image 1 at iterations 10 and 11: two crops
  later = read(2, [12, 13])
  assert not np.array_equal(later[0], one[0])            # another iteration, other crops
  evaluation = read(2, None)
  for batch, row in zip(evaluation, rows):
    np.testing.assert_array_equal(batch, x[row])          # no steps: the evaluation transform


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A prepared TFDS set of JPEGs of several sizes with ImageNet's splits (train, validation), built without
  TensorFlow as tests/test_data_images.py builds its own."""
  tfds = pytest.importorskip("tensorflow_datasets")
  directory = tmp_path_factory.mktemp("tfds")

  class TinyImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      image = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
      features = tfds.features.FeaturesDict({"image": image, "label": tfds.features.ClassLabel(names=list(CLASSES))})
      return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(8, 0), "validation": self._generate_examples(3, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {"image": PIL.Image.fromarray(rng.integers(0, 256, (60 + 4 * i, 64, 3), np.uint8)), "label": i % 3}

  TinyImagenet(data_dir=str(directory), file_format="array_record").download_and_prepare()
  return directory


def test_a_prepared_tfds_set_is_read_on_demand_too(tfds_dir):
  import tensorflow_datasets as tfds
  config = lazy_config("", name="tfds", tfds_name="tiny_imagenet", tfds_dir=str(tfds_dir), tfds_test_split="validation",
                       image_size=32, val_fraction=0.25)
  dataset = data.load(config, seed=0)
  (x, y), (x_val, y_val), (x_test, y_test) = dataset.train, dataset.val, dataset.test
  assert isinstance(x, lazy.LazyImages) and dataset.input_shape == (32, 32, 3) and dataset.num_classes == 3
  assert (len(x), len(x_val), len(x_test)) == (6, 2, 3)
  assert sorted([*y, *y_val]) == sorted(i % 3 for i in range(8))
  reference = tfds.builder("tiny_imagenet", data_dir=str(tfds_dir)).as_data_source("validation")
  assert sorted(y_test.tolist()) == [0, 1, 2] and y_test.tolist() == [int(e["label"]) for e in reference]
  np.testing.assert_array_equal(x_test[1], lazy.Crops(32, 37).center(PIL.Image.fromarray(reference[1]["image"])))


# ---------------------------------------------------------------------------------- the config, end to end

SCRIPT = r"""
import json, sys
import ml_collections
from lth_jax import cli
from lth_jax.config import from_file
from tests.helpers import override

config = from_file("configs/imagenet_resnet50.py")
# ImageNet's protocol shrunk: 2 epochs (warmup 1, lr x0.1 after the first), one IMP round rewound to epoch 1
override(config, **{"data.dir": sys.argv[1], "workdir": sys.argv[2], "data.image_size": 56, "data.workers": 2,
                    "train.batch_size": 8, "train.eval_batch_size": 8, "train.epochs": 2, "optimizer.lr": 0.05,
                    "optimizer.warmup_epochs": 1.0, "optimizer.milestones": (1,), "prune.rewind_epoch": 1,
                    "iterative.rounds": 1, "metrics.max_examples": 6, "log.tensorboard": False,
                    "log.progress": False})
if sys.argv[3] == "mlp":   # the protocol and the data path without ResNet-50's minutes of compiling
  config.model = ml_collections.ConfigDict({"name": "mlp", "widths": (16,)})
else:
  config.model.width = 4
cli.run(config)
"""


def run_config(tree, workdir, model: str) -> dict:
  env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "XDG_CACHE_HOME": str(workdir / "cache")}
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tree), str(workdir / "run"), model], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((workdir / "run" / "results.json").read_text())


def check_run(results: dict, model: str) -> None:
  assert results["environment"]["devices"] == "cpu:0, cpu:1, cpu:2, cpu:3"
  assert results["config"]["model"]["name"] == model and results["config"]["data"]["pipeline"] == "stream"
  dense, ticket = results["runs"]
  assert (dense["method"], ticket["method"]) == ("dense", "iterative")
  assert abs(ticket["sparsity"] - 0.2) < 1e-3           # open_lth's 20% of the remaining weights per round
  assert [row["epoch"] for row in ticket["curve"]] == [2]   # rewound to epoch 1, trained from there
  for run in (dense, ticket):
    assert np.isfinite(run["curve"][-1]["train_loss"]) and 0 <= run["test_accuracy"] <= 1


@slow   # CI budget: the transforms, folder, streaming and TFDS tests above run in CI; this one adds 4 devices
def test_imagenet_config_runs_end_to_end_on_four_devices(tree, tmp_path):
  check_run(run_config(tree, tmp_path, "mlp"), "mlp")


@slow
def test_imagenet_resnet50_runs_end_to_end_on_four_devices(tree, tmp_path):
  check_run(run_config(tree, tmp_path, "imagenet_resnet50"), "imagenet_resnet50")
