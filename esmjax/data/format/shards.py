"""Shards: files of encoded blocks back to back, an index and a footer, read through mmap.

    [block record, 64-byte aligned] ...  [index]  [footer]

Format 2 (written): the index holds (offset, length, checksum of the record: three u64) per
block, and the footer (index offset, block count, CRC-32 of the index, magic `ESBSHRD2`). Every
block is checked against its checksum when it is read, so bytes changed on disk after writing (a
bad sector, a partial copy, an editor) raise `DatasetError` naming the shard and the block instead
of training on garbage. Format 1 (read, never written) has (offset, length) pairs and the magic
`ESBSHRD1`: no checksums.

The block checksum (`block_checksum`) is three 64-bit sums of the record's 8-byte words laid out
as a matrix 4 KB wide: their plain sum, and their sums weighted by fixed odd pseudo-random
constants per column and per row. NumPy computes it 2-3x faster than the standard library's
fastest checksum, zlib.crc32 (benchmarks/results/data_throughput.md); CRC-32 alone would cost more
CPU per row than everything else the pipeline does. What it catches: any change confined
to one 8-byte word; zeroed, garbage or shifted sectors, and any other random change, except with
probability ~2^-64; two words swapped, unless they differ only in their top bits. It is no defence
against deliberate tampering. The small index is checked with CRC-32.

Why not ArrayRecord: its reads measured 15 ms per 3.6 MB block with zstd and 5 ms uncompressed (a
copy through a small buffer), the pipeline's bottleneck; an mmap'd shard gives each block to
`np.frombuffer` with no read, copy or decode at all.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import zlib
from typing import Any

import numpy as np

from esmjax.common.schema import DatasetError, Schema
from esmjax.data.format import blocks as blocks_lib
from esmjax.data.format import ids as ids_lib

SHARD_SUFFIX = ".esb"
_MAGIC_V1, _MAGIC_V2 = b"ESBSHRD1", b"ESBSHRD2"
_FOOTER_V1 = struct.Struct("<QQ8s")  # index offset, block count, magic
_FOOTER_V2 = struct.Struct("<QQI4x8s")  # index offset, block count, CRC-32 of the index, magic
_OPENING = threading.Lock()  # a reader is opened once, though the pipeline's threads share it
_LANES = 512  # 8-byte words per row of the checksum's matrix (4 KB)
_LANE_WEIGHTS = ids_lib.splitmix64(np.arange(_LANES, dtype=np.uint64)) | np.uint64(1)


def block_checksum(record) -> tuple[int, int, int]:
  """(sum, column-weighted sum, row-weighted sum) mod 2^64 of the record's little-endian 8-byte
  words, as rows of `_LANES` words (the last row zero-padded); the length is added to the third."""
  n = len(record)
  rows = n // (8 * _LANES)
  words = np.frombuffer(record, "<u8", rows * _LANES).reshape(rows, _LANES)
  last = np.zeros(8 * _LANES, np.uint8)
  rest = np.frombuffer(record, np.uint8, n - 8 * _LANES * rows, 8 * _LANES * rows)
  last[: len(rest)] = rest
  last = last.view("<u8")
  with np.errstate(over="ignore"):  # sums are mod 2^64
    col = words.sum(0) + last
    row = np.append(words.sum(1), last.sum())
    row_weights = ids_lib.splitmix64(np.arange(len(row), dtype=np.uint64) + np.uint64(_LANES))
    row_weights |= np.uint64(1)
    return (
      int(col.sum()),
      int((col * _LANE_WEIGHTS).sum()),
      int((row * row_weights).sum() + np.uint64(n)),
    )


class ShardWriter:
  """Writes one shard atomically: to `<name>.tmp`, renamed on `close()`.

  Every block is validated against `schema` first (`blocks.check_block`: shapes, ids inside their
  vocabularies, finite values), so a shard never holds what a model cannot take. A crashed writer
  leaves only a `.tmp` file, never a shard that looks complete.
  """

  def __init__(self, directory: str, name: str, schema: Schema, codec: str | None = None):
    self.name, self.path, self.schema = name, os.path.join(directory, name), schema
    self.codec = codec  # blocks_lib.CODECS: each block record compressed whole
    self._tmp = self.path + ".tmp"
    self._f = open(self._tmp, "wb")
    self._index: list[tuple[int, ...]] = []
    self._pos = 0
    self.block_sizes: list[int] = []

  def write(self, block: dict[str, np.ndarray]) -> None:
    n = blocks_lib.check_block(self.schema, block)
    if n == 0:
      return
    rec = blocks_lib.encode_block(block, self.codec)
    self._f.write(rec)
    pad = (-len(rec)) % blocks_lib.ALIGN
    self._f.write(b"\0" * pad)
    self._index.append((self._pos, len(rec), *block_checksum(rec)))
    self._pos += len(rec) + pad
    self.block_sizes.append(int(n))

  def close(self) -> dict[str, Any]:
    """Finishes the shard; returns its manifest entry."""
    index = np.asarray(self._index, np.uint64).reshape(-1, 5).tobytes()
    self._f.write(index)
    self._f.write(_FOOTER_V2.pack(self._pos, len(self._index), zlib.crc32(index), _MAGIC_V2))
    self._f.flush()
    os.fsync(self._f.fileno())
    self._f.close()
    os.replace(self._tmp, self.path)
    return {
      "path": self.name,
      "num_blocks": self.num_blocks,
      "num_rows": self.num_rows,
      "block_sizes": self.block_sizes,
    }

  def abort(self) -> None:
    """Drops an unfinished shard (only its `.tmp` ever existed)."""
    if not self._f.closed:
      self._f.close()
    if os.path.exists(self._tmp):
      os.remove(self._tmp)

  @property
  def num_blocks(self) -> int:
    return len(self.block_sizes)

  @property
  def num_rows(self) -> int:
    return sum(self.block_sizes)


class ShardReader:
  """Random access to the blocks of one shard through a read-only mmap (opened lazily, per
  process).

  `record(j)` is block j's bytes, unverified; `verify(j)` checks them against the index's checksum
  (format 2); `self[j]` is the verified, decoded block.
  """

  def __init__(self, path: str, num_blocks: int | None = None):
    self.path, self._expected = path, num_blocks  # the manifest's block count, checked on open
    self._mm = self._index = self._view = None
    self._checksummed = False

  def _open(self) -> None:
    if self._mm is None:
      with _OPENING:
        if self._mm is None:
          self._open_now()

  def _open_now(self) -> None:
    try:
      with open(self.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _FOOTER_V1.size:
          raise DatasetError(f"shard {self.path} is truncated ({size} bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
      raise DatasetError(f"shard {self.path} cannot be read: {e}") from None
    magic = bytes(mm[size - 8 :])
    if magic == _MAGIC_V2 and size >= _FOOTER_V2.size:
      idx_off, count, index_crc, _ = _FOOTER_V2.unpack(mm[size - _FOOTER_V2.size :])
      width, footer = 5, _FOOTER_V2.size
    elif magic == _MAGIC_V1:
      idx_off, count, _ = _FOOTER_V1.unpack(mm[size - _FOOTER_V1.size :])
      width, footer, index_crc = 2, _FOOTER_V1.size, None
    else:
      raise DatasetError(f"shard {self.path} is corrupt or not an esmjax shard (bad footer)")
    if idx_off + 8 * width * count + footer != size:
      raise DatasetError(
        f"shard {self.path} is corrupt: its footer does not match its size ({size} bytes)"
      )
    index = mm[idx_off : idx_off + 8 * width * count]
    if index_crc is not None and zlib.crc32(index) != index_crc:
      raise DatasetError(
        f"shard {self.path} is corrupt: the checksum of its block index does not match"
      )
    if self._expected is not None and count != self._expected:
      raise DatasetError(
        f"shard {self.path} has {count} blocks; the manifest lists {self._expected}"
      )
    # Python ints and one memoryview, made once: per block, a lookup and a slice.
    self._index = np.frombuffer(index, np.uint64).reshape(-1, width).tolist()
    if any(off + n > idx_off for off, n, *_ in self._index):
      raise DatasetError(f"shard {self.path} is corrupt: its index points past its blocks")
    self._checksummed = index_crc is not None
    self._view = memoryview(mm)
    self._mm = mm

  @property
  def checksummed(self) -> bool:
    """Whether the shard holds block checksums (format 2)."""
    self._open()
    return self._checksummed

  def __len__(self) -> int:
    self._open()
    return len(self._index)

  def record(self, j: int) -> memoryview:
    """Block j's bytes, unverified."""
    self._open()
    off, n, *_ = self._index[j]
    return self._view[off : off + n]

  def verify(self, j: int) -> None:
    """Raises DatasetError when block j's bytes differ from those written (format 2 only)."""
    self._open()
    if self._checksummed:
      off, n, *want = self._index[j]
      got = block_checksum(self._view[off : off + n])
      if list(got) != want:
        raise DatasetError(
          f"shard {self.path}, block {j}: checksum mismatch ({got[0]:016x}, written "
          f"{want[0]:016x}): the file changed after it was written; re-create the dataset"
        )

  def decode(self, j: int) -> dict[str, np.ndarray]:
    """Block j, decoded without verification (the caller verified it)."""
    try:
      return blocks_lib.decode_block(self.record(j))
    except DatasetError as e:
      raise DatasetError(f"shard {self.path}, block {j}: {e}") from None

  def __getitem__(self, j: int) -> dict[str, np.ndarray]:
    self.verify(j)
    return self.decode(j)

  def __getstate__(self):  # picklable for grain worker processes: reopen there
    return {
      "path": self.path,
      "_expected": self._expected,
      "_mm": None,
      "_index": None,
      "_view": None,
      "_checksummed": False,
    }
