"""Files of a directory tree or a tar archive, and a cache of what is built from them: what the file-based
sources (lth_jax.data.files, lth_jax.data.tfds_source) share.

Archives (.tar.gz, .tgz, .tar) are streamed member by member in a single pass and never extracted to disk.
Names are handled as plain strings, relative to the tree's root with "/" separators: pathlib is slow for a
million names.
"""

import hashlib
import os
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from absl import logging
import numpy as np

from lth_jax.data import download
from lth_jax.errors import UserError, check

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def parts(name: str) -> tuple[str, ...]:
  """"./a/b.png" -> ("a", "b.png")."""
  return tuple(part for part in name.split("/") if part not in ("", "."))


def existing_path(value: str, expected: str) -> Path:
  """config.data.dir as a path that exists; else a UserError ending in `expected` (what the source reads)."""
  check(bool(value), f"config.data.dir is empty; {expected}; set it with --config.data.dir")
  path = Path(value).expanduser()
  check(path.exists(), f"config.data.dir={value!r}: {path} does not exist; {expected}")
  return path


def files(path: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
  """(name relative to `path`, contents) of the wanted files in a directory tree or an archive."""
  if path.is_file():
    yield from archive_files(path, wanted)
    return
  for relative in walk(path, wanted):
    yield relative, (path / relative).read_bytes()


def walk(directory: Path, wanted: Callable[[str], bool]) -> Iterator[str]:
  """The wanted files' names relative to `directory`, in a fixed order (without reading them)."""
  top = str(directory)
  for folder, subdirectories, names in os.walk(top):
    subdirectories.sort()
    prefix = os.path.relpath(folder, top).replace(os.sep, "/")
    for name in sorted(names):
      relative = name if prefix == "." else f"{prefix}/{name}"
      if wanted(relative):
        yield relative


def archive_files(path: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
  """Streams a tar archive once, front to back ("r|*"): a compressed archive never seeks backwards."""
  check(path.name.endswith(ARCHIVE_SUFFIXES),
        f"config.data.dir={str(path)!r} is a file but not an archive ({', '.join(ARCHIVE_SUFFIXES)})")
  try:
    with tarfile.open(path, "r|*") as archive:
      for member in archive:
        if member.isfile() and wanted(member.name):
          yield member.name, archive.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    raise UserError(f"{path}: cannot read the archive ({e}); check config.data.dir") from e


def cached(path: Path, build: Callable[[Path], dict[str, np.ndarray]], kind: str = "image_folder"
           ) -> dict[str, np.ndarray]:
  """`build(path)`, kept as an .npz in the cache directory under a digest of `kind` and the names, sizes and times
  of the files under `path`.

  Args:
    path: a file or a directory (every file under it is part of the digest).
    build: path -> arrays, holding y_train and y_test (the examples it read, for the log).
    kind: what `build` makes; another kind over the same files is another entry.
  Returns:
    The arrays, read from the cache when an entry for these files exists.
  """
  cache = download.cache_root() / f"{_fingerprint(path, kind)}.npz"
  if cache.is_file():
    try:
      with np.load(cache, allow_pickle=False) as file:
        return {key: file[key] for key in file.files}
    except (OSError, ValueError, zipfile.BadZipFile):
      logging.warning("Ignoring the unreadable cache file %s", cache)
  start = time.perf_counter()
  arrays = build(path)
  logging.info("Read %d images from %s in %.1f s", len(arrays["y_train"]) + len(arrays["y_test"]), path,
               time.perf_counter() - start)
  try:
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.partial")
    with open(partial, "wb") as file:
      np.savez(file, **arrays)
    os.replace(partial, cache)  # atomic: a concurrent run sees either no file or a whole one
    logging.info("Cached the %s at %s", kind, cache)
  except OSError as e:  # a read-only home only costs the next run the decoding time
    logging.warning("Could not cache the %s at %s: %s", kind, cache, e)
  return arrays


def _fingerprint(path: Path, kind: str) -> str:
  path = path.resolve()
  files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
  digest = hashlib.sha256(f"{kind} v1\n".encode())  # bump the version when the cached layout changes
  for file in files:
    stat = file.stat()
    digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()
