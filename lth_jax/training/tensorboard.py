"""Training curves as TensorBoard event files, written and read without TensorFlow or TensorBoard installed.

An event file is a TFRecord stream: each record is its length (uint64, little-endian), the masked CRC-32C of
those 8 bytes, the payload, and the masked CRC-32C of the payload. Each payload is an `Event` protocol buffer
(wall_time = 1: double, step = 2: int64, file_version = 3: string, summary = 5: Summary); a `Summary` holds
repeated values (1), each a tag (1: string) and a simple_value (2: float). Only these fields are written here,
encoded by hand: they are what TensorBoard's scalar dashboard reads.

One run's curve goes to one file, written whole under a temporary name and renamed: a resumed run that
records the same run again replaces its file instead of adding a second, duplicate curve.
"""

import os
import socket
import struct
import time
from pathlib import Path

# history row key -> TensorBoard tag; the slash groups the charts (train / val / test) in the dashboard
TAGS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy", "val_loss": "val/loss",
        "val_accuracy": "val/accuracy", "test_loss": "test/loss", "test_accuracy": "test/accuracy",
        "lr": "learning_rate", "sparsity": "sparsity"}
PREFIX = "events.out.tfevents."


def write_run(directory, curve: list[dict], wall_time: float | None = None) -> Path:
  """The per-epoch rows of `curve` (history rows: epoch, losses, accuracies, lr, sparsity) as one event file."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  wall_time = time.time() if wall_time is None else wall_time
  records = [_event(wall_time, 0, file_version="brain.Event:2")]
  for row in curve:
    values = [(tag, row[key]) for key, tag in TAGS.items() if row.get(key) is not None]
    records.append(_event(wall_time, row["epoch"], values=values))
  path = directory / f"{PREFIX}{int(wall_time)}.{socket.gethostname()}.lth_jax"
  partial = directory / f".{path.name}.partial"
  partial.write_bytes(b"".join(map(_frame, records)))
  for old in directory.glob(PREFIX + "*"):
    old.unlink()
  os.replace(partial, path)
  return path


def read_scalars(directory) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] from every event file in `directory`, checking each record's checksums."""
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(Path(directory).glob(PREFIX + "*")):
    for payload in _records(path.read_bytes(), path):
      event = _fields(payload)
      step = event.get(2, [0])[0]
      for summary in event.get(5, []):
        for value in _fields(summary).get(1, []):
          value = _fields(value)
          tag = value[1][0].decode()
          scalars.setdefault(tag, []).append((step, struct.unpack("<f", value[2][0])[0]))
  return scalars


# ------------------------------------------------------------------------------------------ protocol buffers


def _event(wall_time: float, step: int, file_version: str = "", values=()) -> bytes:
  out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
  if file_version:
    out += _bytes_field(3, file_version.encode())
  if values:
    summary = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))
                       for tag, value in values)
    out += _bytes_field(5, summary)
  return out


def _key(field: int, wire_type: int) -> bytes:
  return _varint(field << 3 | wire_type)


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _bytes_field(field: int, data: bytes) -> bytes:
  return _key(field, 2) + _varint(len(data)) + data


def _fields(data: bytes) -> dict[int, list]:
  """field number -> values: ints for varints, raw bytes for 64-bit, 32-bit and length-delimited fields."""
  fields, i = {}, 0
  while i < len(data):
    key, i = _read_varint(data, i)
    field, wire_type = key >> 3, key & 7
    if wire_type == 0:
      value, i = _read_varint(data, i)
    elif wire_type in (1, 5):
      size = 8 if wire_type == 1 else 4
      value, i = data[i:i + size], i + size
    elif wire_type == 2:
      size, i = _read_varint(data, i)
      value, i = data[i:i + size], i + size
    else:
      raise ValueError(f"unsupported protocol buffer wire type {wire_type}")
    fields.setdefault(field, []).append(value)
  return fields


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    byte = data[i]
    value |= (byte & 0x7F) << shift
    i, shift = i + 1, shift + 7
    if not byte & 0x80:
      return value, i


# ------------------------------------------------------------------------------------------------ TFRecord


def _frame(payload: bytes) -> bytes:
  length = struct.pack("<Q", len(payload))
  return length + struct.pack("<I", _masked_crc(length)) + payload + struct.pack("<I", _masked_crc(payload))


def _records(data: bytes, where) -> list[bytes]:
  records, i = [], 0
  while i < len(data):
    length = data[i:i + 8]
    (size,), (length_crc,) = struct.unpack("<Q", length), struct.unpack("<I", data[i + 8:i + 12])
    payload = data[i + 12:i + 12 + size]
    (payload_crc,) = struct.unpack("<I", data[i + 12 + size:i + 16 + size])
    if length_crc != _masked_crc(length) or payload_crc != _masked_crc(payload):
      raise ValueError(f"{where}: a record's checksum does not match at byte {i}")
    records.append(payload)
    i += 16 + size
  return records


def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    for _ in range(8):
      n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1  # the Castagnoli polynomial, bit-reversed
    table.append(n)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of `data`, the checksum TFRecord frames carry."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
