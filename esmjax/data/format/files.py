"""Small file utilities of the data package: atomic JSON writes, JSON reads, and what a file's
first bytes say it is (compressed, an archive, binary)."""

from __future__ import annotations

import json
import os
from typing import Any

# First bytes -> kind: compressions and archives an input file may turn out to be.
_MAGICS = (
  (b"\x1f\x8b", "gzip"),
  (b"\x28\xb5\x2f\xfd", "zstd"),
  (b"\xfd7zXZ\x00", "xz"),
  (b"\x04\x22\x4d\x18", "lz4"),
  (b"PK\x03\x04", "zip"),
  (b"PAR1", "parquet"),
)
COMPRESSIONS = ("gzip", "bzip2", "zstd", "xz", "lz4")
ARCHIVES = ("zip", "tar")
UNPACK_HINT = {
  "gzip": "gunzip -k {}",
  "bzip2": "bunzip2 -k {}",
  "zstd": "zstd -d {}",
  "xz": "xz -dk {}",
  "lz4": "lz4 -d {}",
  "zip": "unzip {}",
  "tar": "tar -xf {}",
}


def write_json_atomic(path: str, obj: Any, *, indent: int | None = None) -> None:
  """Writes `path` through a `.tmp` file renamed into place: readers see the old or the new file,
  never half of one."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=indent)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  """The JSON content of `path`, or None if there is no such file."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def sniff(path: str) -> str | None:
  """What the file's first bytes say it is: one of COMPRESSIONS or ARCHIVES, 'parquet', 'binary'
  (NUL bytes in its first 4 KB: not text), or None for text."""
  with open(path, "rb") as f:
    head = f.read(4096)
  for magic, kind in _MAGICS:
    if head.startswith(magic):
      return kind
  if head[:3] == b"BZh" and head[3:4].isdigit():
    return "bzip2"
  if head[257:262] == b"ustar":
    return "tar"
  return "binary" if b"\x00" in head else None


def describe_kind(kind: str) -> str:
  """'gzip' -> 'gzip-compressed', 'zip' -> 'a zip archive', 'binary' -> 'not text'."""
  if kind in COMPRESSIONS:
    return f"{kind}-compressed"
  return f"a {kind} archive" if kind in ARCHIVES else kind
