"""Blocks: the unit a dataset stores and the pipeline reads, and their byte encoding.

A block is a dict of NumPy arrays, all with the same leading row count `n`:

    sparse     int32   [n, F]      single-valued ids, per field in [0, vocab_size); 0 = PAD, 1 = OOV
    mv_ids     int32   [n, Lsum]   multi-valued ids, the fields' slots side by side (field k owns
                                   columns offset_k : offset_k + max_len_k); 0 = PAD (empty slot)
    mv_w       float32 [n, Lsum]   the weights of those ids (0 in empty slots)
    dense      float32 [n, Dn]     raw dense values (normalised / bucketised by the model)
    labels     uint8   [n, K]      0/1 labels, in the order of `schema.labels`
    user       int64   [n]         user key (GAUC groups)
    sample_id  int64   [n]         the source's sample id
    truth      float32 [n, T]      optional ground truth (synthetic data), as `schema.truth`

Why blocks of thousands of rows: a grain record costs ~100 µs of Python whatever its size, so one
record per row would cap the input at ~10 k rows/s (docs/design.md, Data).

`encode_block` turns a block into one bytes record (a small JSON header and the raw arrays, 64-byte
aligned), so decoding is `np.frombuffer`: no copies, no pickle. With `codec` ("zstd", "lz4") the
record is compressed whole (pyarrow's codecs) behind a small header of its own (magic `ESBZ`, the
codec, the plain record's size); `decode_block` decompresses it into one buffer and reads that as
above. Why whole records, and why not narrower dtypes: the columns are mostly padding and values
that repeat across the rows of one request (the user's features, the behaviour lists), which a
byte compressor removes wholesale: on the Ali-CCP-shaped world lz4 took a row from 706 to 62 bytes,
zstd level 1 to 41 (benchmarks/results/block_codec.md, with the pipeline's rows/s for each), and
narrowing the integer columns first (user and sample ids to 32 bits) saved nothing on top of zstd
(38.58 against 38.55 B/row on one block; the ids need their 32 bits at a million hash buckets), so
the columns keep the dtypes the model reads.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from esmjax.common.schema import DatasetError, Schema

_MAGIC = b"ESB1"
_MAGIC_Z = b"ESBZ"
ALIGN = 64
CODECS = ("zstd", "lz4")
_LEVELS = {"zstd": 1, "lz4": None}  # zstd 1: ~3 µs/row to compress, ~0.6 µs/row to decompress


def empty_block(schema: Schema, n: int = 0) -> dict[str, np.ndarray]:
  """A block of `n` zero rows with the right shapes and dtypes (PAD everywhere)."""
  b = {
    "sparse": np.zeros((n, len(schema.sparse)), np.int32),
    "mv_ids": np.zeros((n, schema.mv_total_len), np.int32),
    "mv_w": np.zeros((n, schema.mv_total_len), np.float32),
    "dense": np.zeros((n, len(schema.dense)), np.float32),
    "labels": np.zeros((n, len(schema.labels)), np.uint8),
    "user": np.zeros((n,), np.int64),
    "sample_id": np.zeros((n,), np.int64),
  }
  if schema.truth:
    b["truth"] = np.zeros((n, len(schema.truth)), np.float32)
  return b


def check_block(schema: Schema, block: dict[str, np.ndarray], *, values: bool = True) -> int:
  """Validates a block against the schema; returns its row count.

  Always: the columns, dtypes and shapes. With `values`: every id inside its field's vocabulary,
  labels 0 or 1, and dense values, weights and truth finite, so nothing a model cannot take is
  ever written. Errors name the column, the field and the first offending row.
  """
  ref = empty_block(schema, 0)
  if set(block) != set(ref):
    raise DatasetError(f"block columns {sorted(block)} != schema columns {sorted(ref)}")
  n = len(block["user"])
  for k, r in ref.items():
    a = block[k]
    if a.dtype != r.dtype or a.shape[1:] != r.shape[1:] or a.shape[0] != n:
      raise DatasetError(
        f"block column {k!r}: {a.dtype}{a.shape}, expected {r.dtype}(n={n}, *{r.shape[1:]})"
      )
  if values and n:
    _check_ids(
      block["sparse"],
      [f.vocab_size for f in schema.sparse],
      [f.name for f in schema.sparse],
      "sparse",
    )
    names = [f.name for f in schema.multi for _ in range(f.max_len)]
    _check_ids(
      block["mv_ids"],
      [f.vocab_size for f in schema.multi for _ in range(f.max_len)],
      names,
      "mv_ids",
    )
    if block["labels"].size and block["labels"].max() > 1:
      row, col = np.argwhere(block["labels"] > 1)[0]
      raise DatasetError(
        f"block column 'labels': label {schema.labels[col]!r} is "
        f"{block['labels'][row, col]} at row {row}; labels are 0 or 1"
      )
    for k, field_names in (
      ("dense", [f.name for f in schema.dense]),
      ("mv_w", names),
      ("truth", list(schema.truth)),
    ):
      if k in block and block[k].size and not np.isfinite(block[k]).all():
        row, col = np.argwhere(~np.isfinite(block[k]))[0]
        raise DatasetError(
          f"block column {k!r}: field {field_names[col]!r} is "
          f"{block[k][row, col]} at row {row}; values must be finite"
        )
  return n


def _check_ids(ids: np.ndarray, vocab: Sequence[int], names: Sequence[str], column: str) -> None:
  if not ids.size:
    return
  bound = np.asarray(vocab, np.uint32)
  bad = ids.view(np.uint32) >= bound  # negative ids wrap to huge unsigned values
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise DatasetError(
      f"block column {column!r}: field {names[col]!r} has id {ids[row, col]} at "
      f"row {row}, outside its vocabulary [0, {vocab[col]})"
    )


def concat_blocks(blocks: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def slice_block(block: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
  return {k: v[idx] for k, v in block.items()}


def fixed_size_blocks(
  blocks: Iterable[dict[str, np.ndarray]], block_rows: int
) -> Iterator[dict[str, np.ndarray]]:
  """A stream of blocks of any sizes, re-cut in order into blocks of `block_rows` rows (the last one
  shorter); empty blocks vanish."""
  pending, pending_n = [], 0
  for b in blocks:
    n = len(b["user"])
    if not n:
      continue
    pending.append(b)
    pending_n += n
    if pending_n >= block_rows:
      big = concat_blocks(pending) if len(pending) > 1 else pending[0]
      start = 0
      while pending_n - start >= block_rows:
        yield slice_block(big, slice(start, start + block_rows))
        start += block_rows
      pending = [slice_block(big, slice(start, None))] if start < pending_n else []
      pending_n -= start
  if pending_n:
    yield concat_blocks(pending) if len(pending) > 1 else pending[0]


def row_bytes(schema: Schema) -> int:
  """Bytes of one row in a block."""
  return int(sum(v.nbytes for v in empty_block(schema, 1).values()))


def auto_block_rows(schema: Schema, target_bytes: int = 1 << 20) -> int:
  """A power of two giving ~1 MB blocks: large enough that the per-block costs (an index lookup,
  a header, a checksum call) vanish per row, small enough that a window of them stays cheap."""
  n = target_bytes / max(row_bytes(schema), 1)
  return int(min(16384, max(256, 2 ** round(np.log2(n)))))


def encode_block(block: dict[str, np.ndarray], codec: str | None = None) -> bytes:
  """Block -> bytes: MAGIC, u32 header length, JSON header, 64-byte aligned raw arrays; with
  `codec`, that record compressed behind a `ESBZ` header."""
  entries, chunks, off = {}, [], 0
  for k in sorted(block):
    a = np.ascontiguousarray(block[k])
    pad = (-off) % ALIGN
    if pad:
      chunks.append(b"\0" * pad)
      off += pad
    entries[k] = [a.dtype.str, list(a.shape), off]
    chunks.append(a.tobytes())
    off += a.nbytes
  rec = _with_header(_MAGIC, json.dumps(entries).encode(), b"".join(chunks))
  if codec is None:
    return rec
  import pyarrow as pa

  if codec not in CODECS:
    raise ValueError(f"block codec {codec!r}; allowed: {list(CODECS)} or None")
  packed = pa.Codec(codec, compression_level=_LEVELS[codec]).compress(rec, asbytes=True)
  return _with_header(_MAGIC_Z, json.dumps([codec, len(rec)]).encode(), packed)


def _with_header(magic: bytes, header: bytes, payload: bytes) -> bytes:
  head_len = len(magic) + 4 + len(header)
  lead = (-head_len) % ALIGN
  return magic + struct.pack("<I", len(header) + lead) + header + b" " * lead + payload


def _decompress(record) -> memoryview:
  """An `ESBZ` record -> the plain record's bytes."""
  import pyarrow as pa

  (hlen,) = struct.unpack("<I", record[4:8])
  try:
    codec, size = json.loads(bytes(record[8 : 8 + hlen]))
    plain = pa.Codec(codec).decompress(record[8 + hlen :], decompressed_size=size)
  except (ValueError, TypeError, OSError, pa.ArrowException) as e:
    raise DatasetError(f"compressed block record is corrupt: {e}") from None
  return memoryview(plain)


def decode_block(record) -> dict[str, np.ndarray]:
  """bytes (or a memoryview) of `encode_block` -> the block, as views of `record` (no copies), or
  of its decompressed bytes (a compressed record)."""
  if bytes(record[:4]) == _MAGIC_Z:
    record = _decompress(record)
  if bytes(record[:4]) != _MAGIC:
    raise DatasetError("record is not an esmjax block (bad magic); is this an esmjax dataset?")
  (hlen,) = struct.unpack("<I", record[4:8])
  base = 8 + hlen
  try:
    return {
      k: np.frombuffer(record, dtype=dtype, count=count, offset=base + off).reshape(shape)
      for k, dtype, shape, count, off in _parse_header(bytes(record[8:base]))
    }
  except (ValueError, TypeError, AttributeError) as e:  # a header that does not describe the record
    raise DatasetError(f"block record is corrupt: {e}") from None


@functools.lru_cache(maxsize=1024)
def _parse_header(header: bytes) -> tuple[tuple[str, np.dtype, tuple[int, ...], int, int], ...]:
  """A block header -> (column, dtype, shape, count, offset) per column.

  Cached: every full block of a dataset has the same header bytes, and parsing it (JSON, dtypes,
  products) cost ~35 µs a block, as much as gathering a hundred rows.
  """
  out = []
  for k, (dt, shape, off) in json.loads(header).items():
    shape = tuple(int(x) for x in shape)
    out.append((k, np.dtype(dt), shape, int(np.prod(shape)) if shape else 1, int(off)))
  return tuple(out)
