"""The IDX format of MNIST and Fashion-MNIST: a big-endian header, then the array in C order.

Header: two zero bytes, a type code, the number of dimensions, then one uint32 size per dimension.
MNIST images have magic 2051 (0x0803: uint8, 3 dims) and labels 2049 (0x0801: uint8, 1 dim).
"""

import gzip
import os
import struct

import numpy as np

from lth_jax.errors import UserError, check

TYPE_CODES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file, raw or gzip-compressed (by a `.gz` suffix), into a native-endian array."""
  path = os.fspath(path)
  try:
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise UserError(f"{path}: cannot read ({e})") from e
  check(len(data) >= 4, f"{path}: too short to be an IDX file")
  zeros, code, ndim = struct.unpack_from(">HBB", data)
  magic = struct.unpack_from(">I", data)[0]
  check(zeros == 0 and code in TYPE_CODES,
        f"{path}: bad IDX magic number {magic} ({magic:#010x}); MNIST has 2051 for images, 2049 for labels")
  header = 4 + 4 * ndim
  check(len(data) >= header, f"{path}: IDX header cut short")
  shape = struct.unpack_from(f">{ndim}I", data, 4)
  dtype = TYPE_CODES[code]
  expected = int(np.prod(shape)) * dtype.itemsize
  check(len(data) - header == expected,
        f"{path}: IDX data is {len(data) - header} bytes, header {shape} says {expected}")
  return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
