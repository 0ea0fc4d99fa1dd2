"""Fetch, verify and cache the canonical files of the file-based data sets when `config.data.dir` is empty.

pooch does the work: it checks a cached file against its checksum before every use and fetches it anew if it no
longer matches, downloads to a temporary name in the cache and renames the file only once verified, and retries
a failed download. Here: the catalog of files and sums, the mirror, the checksum override and one-line errors.

The cache is `config.data.cache_dir`, else `$XDG_CACHE_HOME/lth_jax`, else `~/.cache/lth_jax`; each data set
has its own folder there holding the files under their published names.

A mirror (`config.data.mirror` or `$LTH_JAX_DATA_MIRROR`) is a base URL serving the same file names; it
replaces the canonical hosts. `config.data.checksums` (or `$LTH_JAX_DATA_CHECKSUMS`) is a file of
`sha256  name` lines (sha256sum's format) that replaces the published checksums, for a mirror holding
repacked files; names are matched by their last path component.
"""

import dataclasses
import logging
import os
import shutil
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pooch
import tqdm

from lth_jax.errors import UserError, check

CHUNK = 1 << 20
RETRIES = 2      # pooch's retries of a failed download (a refused or cut connection, a wrong sum): 3 attempts per URL
TIMEOUT = 30.0   # seconds without a byte before a connection counts as failed


@dataclasses.dataclass(frozen=True)
class Files:
  urls: tuple[str, ...]       # base URLs tried in order, each holding every file
  digests: dict[str, str]     # file name -> "sha256:<hex>" or "md5:<hex>" (pooch's notation)


# MNIST and Fashion-MNIST: the sha256 sums TFDS publishes (tensorflow_datasets/url_checksums/*.txt, checked
# offline against the installed package). CIFAR: the md5 sums of https://www.cs.toronto.edu/~kriz/cifar.html as
# torchvision's datasets/cifar.py has them (checked against that source offline; no CIFAR archive was at hand).
CATALOG = {
    "mnist": Files(
        ("https://storage.googleapis.com/cvdf-datasets/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        {"train-images-idx3-ubyte.gz": "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
         "train-labels-idx1-ubyte.gz": "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
         "t10k-images-idx3-ubyte.gz": "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
         "t10k-labels-idx1-ubyte.gz": "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"}),
    "fashion_mnist": Files(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {"train-images-idx3-ubyte.gz": "sha256:3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
         "train-labels-idx1-ubyte.gz": "sha256:a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
         "t10k-images-idx3-ubyte.gz": "sha256:346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
         "t10k-labels-idx1-ubyte.gz": "sha256:67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"}),
    "cifar10": Files(("https://www.cs.toronto.edu/~kriz/",),
                     {"cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a"}),
    "cifar100": Files(("https://www.cs.toronto.edu/~kriz/",),
                      {"cifar-100-python.tar.gz": "md5:eb9058c3a382ffc7106e4002c42a8d85"}),
}
MIRROR_ENV = "LTH_JAX_DATA_MIRROR"
CHECKSUMS_ENV = "LTH_JAX_DATA_CHECKSUMS"


def validate(config) -> None:
  """config.data's fetch keys (and their environment variables), checked before any training."""
  mirror = config.mirror or os.environ.get(MIRROR_ENV, "")
  check(not mirror or mirror.startswith(("http://", "https://", "file://")),
        f"config.data.mirror (or ${MIRROR_ENV})={mirror!r} must be empty or a base URL: http://, https:// or file://")
  checksums = config.checksums or os.environ.get(CHECKSUMS_ENV, "")
  check(not checksums or Path(checksums).expanduser().is_file(),
        f"config.data.checksums (or ${CHECKSUMS_ENV})={checksums!r} must be empty or a file of 'sha256  name' lines")


def cache_root(cache_dir: str = "") -> Path:
  return Path(cache_dir or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / \
      ("" if cache_dir else "lth_jax")


def fetch(name: str, config) -> Path:
  """The cache folder of one data set, holding its verified files (downloaded when missing or corrupted).

  Args:
    name: a data set of `CATALOG`.
    config: config.data (`cache_dir`, `mirror` and `checksums`; empty values defer to the environment).

  Returns:
    The folder holding the data set's files under their published names.
  """
  files = CATALOG[name]
  mirror = config.get("mirror", "") or os.environ.get(MIRROR_ENV, "")
  urls = (mirror.rstrip("/") + "/",) if mirror else files.urls
  digests = {**files.digests, **_read_checksums(config.get("checksums", "") or os.environ.get(CHECKSUMS_ENV, ""),
                                                files.digests)}
  folder = cache_root(config.get("cache_dir", "")) / name
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the data cache {folder} ({e}); set config.data.cache_dir to a writable "
                    "folder or point config.data.dir at local files") from e
  pooch.get_logger().setLevel(logging.WARNING)   # its "Downloading ..." lines would break a failure's one line
  for file_name in digests:
    _fetch_file(name, file_name, urls, folder, digests)
  return folder


def _read_checksums(value: str, published: dict[str, str]) -> dict[str, str]:
  if not value:
    return {}
  digests = {}
  for line in Path(value).expanduser().read_text().splitlines():
    fields = line.split()
    if len(fields) == 2 and Path(fields[1].lstrip("*")).name in published:
      digests[Path(fields[1].lstrip("*")).name] = f"sha256:{fields[0].lower()}"
  return digests


def _fetch_file(dataset: str, file_name: str, urls: tuple[str, ...], folder: Path, digests: dict[str, str]) -> None:
  """`folder / file_name`, verified: from the cache, else from the first of `urls` that serves it."""
  failures = []
  for url in urls:
    store = pooch.create(path=folder, base_url=url, registry=digests, retry_if_failed=RETRIES)
    try:
      store.fetch(file_name, downloader=_downloader(f"{dataset} {file_name}"))
      return
    except ValueError as e:   # pooch's hash mismatch, after its retries; it deleted the download
      raise UserError(
          f"{dataset}: {url}{file_name} does not match its checksum ({RETRIES + 1} attempts; expected "
          f"{digests[file_name]}); the download was deleted. A mirror serving repacked files needs their sums in "
          f"config.data.checksums (or ${CHECKSUMS_ENV}), a file of 'sha256  name' lines; or set config.data.mirror "
          f"(or ${MIRROR_ENV}) to a good copy, or point config.data.dir at local files") from e
    except OSError as e:      # refused, reset, timed out, cut short, HTTP errors (requests' errors are OSErrors)
      failures.append(f"{url}{file_name}: {' '.join(str(e).split())}")
  raise UserError(f"{dataset}: cannot download {file_name} ({'; '.join(failures)}); check the network, set "
                  f"config.data.mirror (or ${MIRROR_ENV}) to a reachable copy, or point config.data.dir at local files")


def _downloader(label: str) -> Callable[[str, str, pooch.Pooch], None]:
  """A pooch downloader: HTTP(S) by pooch's own, with a progress bar named `label` on a terminal; file:// copies."""

  def download(url: str, output_file: str, store: pooch.Pooch) -> None:
    if url.startswith("file://"):   # pooch has no downloader for local mirrors
      shutil.copyfile(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), output_file)
      return
    # total=1 until pooch sets the announced size: pooch asks the bar for its truth value, which a tqdm bar
    # without a total refuses to give
    with tqdm.tqdm(total=1, unit="B", unit_scale=True, desc=label, disable=not sys.stderr.isatty(),
                   leave=False) as bar:
      pooch.HTTPDownloader(progressbar=bar, chunk_size=CHUNK, timeout=TIMEOUT)(url, output_file, store)

  return download
