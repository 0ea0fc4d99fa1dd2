"""Fetch, verify and cache the canonical files of the file-based data sets when `config.data.dir` is empty.

The cache is `config.data.cache_dir`, else `$XDG_CACHE_HOME/lth_jax`, else `~/.cache/lth_jax`; each data set
has its own folder there holding the files under their published names. A file is written under a temporary
name, its checksum verified, and only then renamed into place, so a name in the cache is always a whole,
verified file; a cached file is verified again before every use and fetched anew if it no longer matches.

A mirror (`config.data.mirror` or `$LTH_JAX_DATA_MIRROR`) is a base URL serving the same file names; it
replaces the canonical hosts. `config.data.checksums` (or `$LTH_JAX_DATA_CHECKSUMS`) is a file of
`sha256  name` lines (sha256sum's format) that replaces the published checksums, for a mirror holding
repacked files; names are matched by their last path component.
"""

import dataclasses
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import tqdm

from lth_jax.errors import UserError, check

CHUNK = 1 << 20
RETRY_DELAYS = (1.0, 3.0)   # seconds before the 2nd and 3rd attempt on a failed connection
TIMEOUT = 30.0              # seconds without a byte before a connection counts as failed


@dataclasses.dataclass(frozen=True)
class Files:
  urls: tuple[str, ...]       # base URLs tried in order, each holding every file
  digests: dict[str, str]     # file name -> "sha256:<hex>" or "md5:<hex>"


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
  """The cache folder of data set `name`, holding its verified files (downloaded when missing)."""
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
  for file_name, digest in digests.items():
    path = folder / file_name
    if path.is_file() and _digest(path, digest) == digest:
      continue
    _download(name, [url + file_name for url in urls], path, digest)
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


def _download(dataset: str, urls: list[str], path: Path, digest: str) -> None:
  """Tries each URL in turn; the file appears under `path` only once whole and verified."""
  partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
  failures = []
  for url in urls:
    error = _fetch_with_retries(url, partial, dataset)
    if error:
      failures.append(f"{url}: {error}")
      continue
    actual = _digest(partial, digest)
    if actual != digest:
      partial.unlink()
      raise UserError(f"{dataset}: {url} does not match its checksum (got {actual}, expected {digest}); the "
                      f"download was deleted. Retry; a mirror serving repacked files needs their sums in "
                      f"config.data.checksums (or ${CHECKSUMS_ENV}), a file of 'sha256  name' lines; or set "
                      f"config.data.mirror (or ${MIRROR_ENV}) to a good copy, or point config.data.dir at local files")
    os.replace(partial, path)  # atomic: a concurrent or later run sees no file or the whole verified one
    return
  raise UserError(f"{dataset}: cannot download {path.name} ({'; '.join(failures)}); check the network, set "
                  f"config.data.mirror (or ${MIRROR_ENV}) to a reachable copy, or point config.data.dir at local files")


def _fetch_with_retries(url: str, partial: Path, dataset: str) -> str | None:
  """None once `partial` holds the whole response, else why not; only failed connections are retried."""
  for delay in (0.0, *RETRY_DELAYS):
    time.sleep(delay)
    try:
      _stream(url, partial, dataset)
      return None
    except urllib.error.HTTPError as e:  # the server answered: asking again will not change its answer
      partial.unlink(missing_ok=True)
      return f"HTTP {e.code} {e.reason}"
    except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, cut short
      partial.unlink(missing_ok=True)
      reason = getattr(e, "reason", None) or e
  return str(reason)


def _stream(url: str, partial: Path, dataset: str) -> None:
  with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(partial, "wb") as file:
    total = int(response.headers.get("Content-Length") or 0) or None
    # labelled with the file's own name (the URL's last part), not the temporary file's
    name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    with tqdm.tqdm(total=total, unit="B", unit_scale=True, desc=f"{dataset} {name}",
                   disable=not sys.stderr.isatty(), leave=False) as bar:
      received = 0
      while chunk := response.read(CHUNK):
        file.write(chunk)
        received += len(chunk)
        bar.update(len(chunk))
  if total is not None and received != total:
    raise http.client.IncompleteRead(b"", total - received)


def _digest(path: Path, digest: str) -> str:
  algorithm = digest.partition(":")[0]
  hasher = hashlib.new(algorithm)
  with open(path, "rb") as file:
    while block := file.read(CHUNK):
      hasher.update(block)
  return f"{algorithm}:{hasher.hexdigest()}"
