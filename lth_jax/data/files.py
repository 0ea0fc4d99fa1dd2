"""Image data sets read from local files: Fashion-MNIST, CIFAR-10/100, a folder of images, an .npz file.

Every source here reads the path in `config.dir`. The training split is shuffled and `config.val_fraction` of
it held out as val; test is the files' own test split. Pixels stay uint8 (`lth_jax.data.pixels`): no float
copy of a large data set is made here.

Archives (.tar.gz, .tgz, .tar) are streamed member by member in a single pass and never extracted to disk
(lth_jax.data.filetree).

`image_folder` decodes every image with PIL, which takes seconds for tens of thousands of files, so it caches
the decoded arrays as `$XDG_CACHE_HOME/lth_jax/<sha256>.npz` (default `~/.cache/lth_jax/`). The sha256 covers
the resolved path and the size and modification time of every file under it, so editing the data makes a new
entry; delete the folder to reclaim the space. Nothing is ever written next to the user's data.

With `config.image_size` > 0 (ImageNet: images of every size, a split larger than host memory) `image_folder`
decodes nothing up front: it lists the files of a directory tree, opens each one's header (so that a file PIL
cannot read stops the run now, not hours into it), caches that index the same way, and returns splits of
`lth_jax.data.lazy.LazyImages`, decoded and resized batch by batch while the run streams them
(config.data.pipeline=stream).
"""

import concurrent.futures
import dataclasses
import functools
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import ml_collections
import numpy as np
import PIL.Image

from lth_jax.data import builtin, download, filetree, lazy
from lth_jax.data.registry import Dataset, register, split
from lth_jax.errors import UserError, check

Config = ml_collections.ConfigDict


@register("fashion_mnist")
def fashion_mnist(config: Config, seed: int) -> Dataset:
  """Fashion-MNIST ships the same four IDX file names as MNIST, so the MNIST reader loads it unchanged."""
  return builtin.idx_images("fashion_mnist", config, seed)


# ----------------------------------------------------------------------------------------------- CIFAR


@dataclasses.dataclass(frozen=True)
class CifarLayout:
  """Where torchvision leaves the python version of a CIFAR data set."""
  folder: str                 # the directory the archive unpacks to
  archive: str                # the file torchvision downloads
  train: tuple[str, ...]      # pickles in `folder`, in order
  test: tuple[str, ...]
  label_key: bytes
  num_classes: int


CIFAR = {
    "cifar10": CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels", 10),
    "cifar100": CifarLayout("cifar-100-python", "cifar-100-python.tar.gz",
                            ("train",), ("test",), b"fine_labels", 100),
}


def _cifar_source(name: str) -> Callable[[Config, int], Dataset]:
  layout = CIFAR[name]

  def source(config: Config, seed: int) -> Dataset:
    path = _cifar_location(config.dir or str(download.fetch(name, config)), name, layout)
    if path is None:  # an image-folder tree of the same data set (e.g. CIFAR-10 as JPEGs)
      return dataclasses.replace(_image_folder(Path(config.dir).expanduser(), seed, config.val_fraction), name=name)
    pickles = _read_cifar_pickles(path, layout)
    x, y = _cifar_arrays([pickles[member] for member in layout.train], layout)
    x_test, y_test = _cifar_arrays([pickles[member] for member in layout.test], layout)
    train, val, test = _pixel_splits(x, y, x_test, y_test, seed, config.val_fraction)
    return Dataset(name, train, val, test, num_classes=layout.num_classes)

  source.__doc__ = f"{name} from `{layout.folder}/`, a directory holding it, `{layout.archive}`, or an image folder."
  return source


for _name in CIFAR:
  register(_name)(_cifar_source(_name))


def _cifar_location(value: str, name: str, layout: CifarLayout) -> Path | None:
  """The pickles' directory or archive that `config.data.dir` points to or holds; None for an image-folder tree."""
  expected = f"{name} expects config.data.dir to be the directory {layout.folder}/, a directory holding it, " \
             f"the archive {layout.archive}, or an image folder (<root>/train/<class>/*.png|jpg) or its archive"
  path = filetree.existing_path(value, expected)
  if path.is_file():  # the format from the archive's first member: the pickles' folder, or images
    first = next(filetree.archive_files(path, lambda member: True), ("", b""))[0]
    return path if _cifar_member(first, layout) else None
  for candidate in (path, path / layout.folder):
    if (candidate / layout.train[0]).is_file():
      return candidate
  if (path / layout.archive).is_file():
    return path / layout.archive
  if next(filetree.files(path, _is_image), None):
    return None
  raise UserError(f"{path} holds neither {layout.train[0]} nor {layout.folder}/ nor {layout.archive}; {expected}")


def _read_cifar_pickles(path: Path, layout: CifarLayout) -> dict[str, dict]:
  """Unpickles exactly the train and test members, from a directory or straight out of the archive."""
  wanted = {*layout.train, *layout.test}
  if path.is_dir():
    pickles = {member: _unpickle((path / member).read_bytes(), path / member)
               for member in wanted if (path / member).is_file()}
  else:
    pickles = {}
    for name, data in filetree.archive_files(path, lambda name: _cifar_member(name, layout) in wanted):
      pickles[_cifar_member(name, layout)] = _unpickle(data, f"{path}:{name}")
  missing = sorted(wanted - set(pickles))
  check(not missing, f"{path} lacks {', '.join(f'{layout.folder}/{m}' for m in missing)}: is it a complete "
        f"{layout.archive} or {layout.folder}/ as torchvision downloads it? (config.data.dir)")
  return pickles


def _cifar_member(name: str, layout: CifarLayout) -> str | None:
  parts = filetree.parts(name)
  return parts[-1] if len(parts) >= 2 and parts[-2] == layout.folder else None


def _cifar_arrays(pickles: list[dict], layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
  """The batches joined, as uint8 (N, 32, 32, 3) images: each row of b'data' holds the R, then G, then B plane."""
  x = np.concatenate([np.asarray(batch[b"data"], np.uint8) for batch in pickles])
  y = np.concatenate([np.asarray(batch[layout.label_key], np.int64) for batch in pickles])
  return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Unpickling runs whatever functions a file names; a CIFAR batch needs only numpy's array rebuilders."""

  ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
             ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
             ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
             ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
             ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

  def find_class(self, module: str, name: str):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    return super().find_class(module, name)


def _unpickle(data: bytes, where) -> dict:
  try:
    # The batches were pickled by Python 2: encoding="bytes" keeps its str keys as bytes (b"data").
    batch = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as e:  # a broken pickle can fail in many ways; all mean the same to the user
    raise UserError(f"{where}: not a CIFAR python batch ({e}); check config.data.dir") from e
  check(isinstance(batch, dict) and b"data" in batch, f"{where}: not a CIFAR python batch (no b'data' key)")
  return batch


# ---------------------------------------------------------------------------------------- image folder


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
TEST_FOLDERS = ("test", "val")   # the test split's folder: "test", else ImageNet's "val"


@register("image_folder")
def image_folder(config: Config, seed: int) -> Dataset:
  """`<root>/train/<class>/*.png|jpg|jpeg` and `<root>/test/<class>/...` (or ImageNet's `val/`) in a directory or an
  archive; classes are train's sorted names. config.image_size > 0: decoded on demand (see the module docstring)."""
  path = filetree.existing_path(config.dir, "image_folder expects config.data.dir to be a directory or a .tar.gz "
                        "holding <root>/train/<class>/*.png|jpg|jpeg and <root>/test/<class>/... (or val/)")
  if config.get("image_size"):
    return _lazy_image_folder(path, config, seed)
  return _image_folder(path, seed, config.val_fraction)


def _image_folder(path: Path, seed: int, val_fraction: float) -> Dataset:
  arrays = filetree.cached(path, _decode_image_tree)
  train, val, test = _pixel_splits(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                                   seed, val_fraction)
  return Dataset("image_folder", train, val, test, num_classes=len(arrays["classes"]))


def _decode_image_tree(path: Path) -> dict[str, np.ndarray]:
  """Decodes every image in one pass, then orders each split by (class, file name) whatever the archive's order."""
  first = None
  where = f"{path}/" if path.is_dir() else f"{path}:"  # how messages name a file: on disk or in the archive

  def decode(name: str, data: bytes) -> np.ndarray:
    nonlocal first
    pixels = _decode(data, where + name)
    first = first or (name, pixels.shape)
    check(pixels.shape == first[1], f"{path}: {name} is {_size(pixels.shape)} but {first[0]} is "
          f"{_size(first[1])}; image_folder needs all images the same size (resize them first, or set "
          "config.data.image_size)")
    return pixels

  classes, splits = _image_tree(path, filetree.files(path, _is_image), decode)
  arrays = {"classes": np.array(classes)}
  for split_name, entries in splits.items():
    arrays[f"x_{split_name}"] = np.stack([entry[2] for entry in entries])
    arrays[f"y_{split_name}"] = _labels(entries, classes)
  return arrays


def _image_tree(path: Path, files: Iterator[tuple[str, object]], read: Callable[[str, object], object]
                ) -> tuple[list[str], dict[str, list]]:
  """The classes (train's sorted class folders) and, per split, the (class, file name, item) entries sorted by
  class and file name, from the `files` (name relative to `path`, payload) of a tree, checked to be one
  train/test tree whose splits hold images of the same classes. An entry's item is read(name, payload), called
  as the file comes for train and test (an archive is read once, in its order), for val only when the tree
  has no test folder."""
  found = {folder: [] for folder in ("train", *TEST_FOLDERS)}
  roots = set()
  for name, payload in files:
    parts = filetree.parts(name)
    if len(parts) < 3 or parts[-3] not in found:
      continue  # e.g. a preview image at the top level
    roots.add(parts[:-3])
    check(len(roots) == 1, f"{path} holds more than one train/test tree ({', '.join(map(_root, roots))}); "
          "point config.data.dir at one")
    deferred = parts[-3] == TEST_FOLDERS[1]
    found[parts[-3]].append((parts[-2], parts[-1], (name, payload) if deferred else read(name, payload)))
  root = f"{path}/{_root(next(iter(roots)))}" if roots else str(path)
  test = next((folder for folder in TEST_FOLDERS if found[folder]), TEST_FOLDERS[0])
  if test == TEST_FOLDERS[1]:
    found[test] = [(label, file, read(*item)) for label, file, item in found[test]]
  for folder in ("train", test):
    check(found[folder], f"no images in {root}/{folder}/<class>/ (*.png, *.jpg, *.jpeg); image_folder "
          f"needs a train and a test (or val) folder (config.data.dir={str(path)!r})")
  classes = sorted({entry[0] for entry in found["train"]})
  test_classes = sorted({entry[0] for entry in found[test]})
  check(classes == test_classes, f"{root}: the {test} classes differ from the train classes "
        f"(only in train: {sorted(set(classes) - set(test_classes))}, "
        f"only in {test}: {sorted(set(test_classes) - set(classes))}); image_folder needs the same class folders")
  return classes, {split_name: sorted(found[folder], key=lambda entry: entry[:2])
                   for split_name, folder in zip(SPLITS, ("train", test))}


def _lazy_image_folder(path: Path, config: Config, seed: int) -> Dataset:
  """image_folder's splits as LazyImages: val a seeded `val_fraction` of train, as for the decoded tree."""
  check(path.is_dir(), f"config.data.image_size={config.image_size} decodes images on demand, which needs them "
        f"as files in a directory; {path} is an archive: extract it and point config.data.dir at the folder")
  index = filetree.cached(path, functools.partial(_index_image_tree, workers=config.workers),
                          kind="image_folder index")
  train, test = (lazy.images(lazy.ImageFiles(path, index[f"files_{s}"]), len(index[f"y_{s}"]), config, seed)
                 for s in SPLITS)
  parts = split(train, index["y_train"], seed, val_fraction=config.val_fraction)
  return Dataset("image_folder", *parts, (test, index["y_test"]), num_classes=len(index["classes"]))


def _index_image_tree(path: Path, workers: int = 0) -> dict[str, np.ndarray]:
  """The tree's files (paths relative to `path`, UTF-8 bytes) and labels per split, each file's header read by
  `workers` threads: a file PIL cannot open stops here, in one line, before anything is trained or written."""
  names = ((name, None) for name in filetree.walk(path, _is_image))
  classes, splits = _image_tree(path, names, lambda name, _: name)
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
    list(pool.map(lambda name: _read_header(path / name), [e[2] for entries in splits.values() for e in entries]))   # list(): raises the first failure
  arrays = {"classes": np.array(classes)}
  for split_name, entries in splits.items():
    arrays[f"files_{split_name}"] = np.array([entry[2].encode() for entry in entries], dtype=np.bytes_)
    arrays[f"y_{split_name}"] = _labels(entries, classes)
  return arrays


def _labels(entries: list, classes: list[str]) -> np.ndarray:
  """The int32 labels of `_image_tree`'s entries: their class's place among `classes`."""
  number = {name: i for i, name in enumerate(classes)}
  return np.array([number[entry[0]] for entry in entries], np.int32)


def _read_header(path: Path) -> None:
  try:
    with PIL.Image.open(path) as image:
      image.size  # noqa: B018  -- the header is parsed on open; the pixels stay unread
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise lazy.cannot_decode(str(path), e) from e


def _is_image(name: str) -> bool:
  # Dot names are hidden files and folders, and the "._x.jpg" resource forks that macOS tar adds: not images.
  return name.lower().endswith(IMAGE_SUFFIXES) and not any(part.startswith(".") for part in filetree.parts(name))


def _decode(data: bytes, where: str) -> np.ndarray:
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      # Grey and RGB images keep their channels; palette, alpha and other modes become RGB.
      pixels = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise lazy.cannot_decode(where, e) from e
  return pixels[..., None] if pixels.ndim == 2 else pixels


def _root(parts: tuple[str, ...]) -> str:
  return "/".join(parts) or "."


def _size(shape: tuple[int, ...]) -> str:
  return "x".join(map(str, shape))


# ------------------------------------------------------------------------------------------------- npz


@register("npz")
def npz(config: Config, seed: int) -> Dataset:
  """x_train, y_train, x_test, y_test (and optionally x_val, y_val) from one .npz file.

  uint8 inputs are pixels (kept as uint8, standing for v / 255); float inputs are taken as they are. Inputs may be
  images (N, H, W, C), grey images (N, H, W), or tabular (N, F). Without x_val, val is split off train.
  """
  path = filetree.existing_path(config.dir, "npz expects config.data.dir to be an .npz file with x_train, y_train, "
                        "x_test, y_test (and optionally x_val, y_val)")
  arrays = _read_npz(path)
  x, y = arrays["x_train"], arrays["y_train"]
  if "x_val" in arrays:
    parts = [split(x, y, seed)[0], (arrays["x_val"], arrays["y_val"])]  # no fractions: split only shuffles
  else:
    parts = split(x, y, seed, val_fraction=config.val_fraction)
  parts = cast_inputs([*parts, (arrays["x_test"], arrays["y_test"])], pixels=x.dtype == np.uint8)
  # The classes are those both train and test reach: a stray label in one split (42 of 10) is refused by
  # registry.check_sane rather than silently widening the model.
  train_max = max(int(labels.max(initial=0)) for _, labels in parts[:-1])
  num_classes = 1 + min(train_max, int(parts[-1][1].max(initial=0)))
  return Dataset("npz", *parts, num_classes=num_classes)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as file:  # no pickles: loading must not run code
      arrays = {key: file[key] for key in file.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:   # EOFError: an empty file
    raise UserError(f"{path}: not a readable .npz of plain arrays ({e or type(e).__name__}); check config.data.dir") from e
  keys = ["x_train", "y_train", "x_test", "y_test"] + (["x_val", "y_val"] if {"x_val", "y_val"} & set(arrays) else [])
  missing = [key for key in keys if key not in arrays]
  check(not missing, f"{path} lacks {', '.join(missing)}; npz needs {', '.join(keys)} (config.data.dir)")
  for part in ("train", "val", "test"):
    if f"x_{part}" not in arrays:
      continue
    x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
    check(x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating),
          f"{path}: x_{part} is {x.dtype}; save uint8 pixels (scaled by 1/255) or floats (taken as they are)")
    check((x.dtype == np.uint8) == (arrays["x_train"].dtype == np.uint8),
          f"{path}: x_{part} is {x.dtype} but x_train {arrays['x_train'].dtype}; save both as uint8 or as floats")
    check(np.issubdtype(y.dtype, np.integer) and y.ndim == 1 and y.min(initial=0) >= 0,
          f"{path}: y_{part} must be non-negative integer class labels of shape (N,), got {y.dtype} {y.shape}")
    check(2 <= x.ndim <= 4 and len(x) == len(y),
          f"{path}: x_{part} {x.shape} must be (N, F), (N, H, W) or (N, H, W, C) with N={len(y)} as in y_{part}")
    check(x.shape[1:] == arrays["x_train"].shape[1:],
          f"{path}: x_{part} has examples of shape {x.shape[1:]}, x_train {arrays['x_train'].shape[1:]}")
    check(len(x) > 0 or part == "val", f"{path}: x_{part} holds no examples; it needs at least one")
  # Grey images (N, H, W) get their channel axis; only tabular inputs stay 2-d.
  return {key: x[..., None] if key.startswith("x_") and x.ndim == 3 else x for key, x in arrays.items()}


# ---------------------------------------------------------------------------------------- shared parts


def _pixel_splits(x, y, x_test, y_test, seed: int, val_fraction: float):
  """Train and val as `split` makes them from uint8 pixels, and test, all uint8."""
  return cast_inputs([*split(x, y, seed, val_fraction=val_fraction), (x_test, y_test)], pixels=True)


def cast_inputs(parts, pixels: bool):
  """int32 labels; inputs float32, or uint8 when they are `pixels` (scaled on their way to the model)."""
  dtype = np.uint8 if pixels else np.float32
  return [(x.astype(dtype, copy=False), y.astype(np.int32, copy=False)) for x, y in parts]
