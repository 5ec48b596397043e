"""The Ali-CCP converter's work: byte ranges of the input files and the tasks that convert them.

Tasks run in a process pool (or in the converting process with one worker): `common_task` parses a
range of the common-features file into rows of the common table; `skeleton_task` converts a range
of the skeleton, joined with the common table, into one shard and returns its sidecar (counts,
statistics, bad lines). Both are module-level functions: picklable for the pool.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from esmjax.common import digest
from esmjax.data.format.blocks import fixed_size_blocks
from esmjax.data.format.shards import ShardWriter
from esmjax.data.ingest.aliccp import parse
from esmjax.data.ingest.aliccp.spec import (
  COMMON_COLS,
  KIND_CODES,
  SKELETON_COLS,
  Spec,
  compile_config,
)
from esmjax.data.ingest.leakage import LeakageStats
from esmjax.data.ingest.shared import BadLines, DenseStats

COMMON_COLUMNS = ("sparse", "dense", "mv_ids", "mv_w", "mv_len", "trunc", "user", "dup_single")
DENSE_SAMPLE = 2048  # rows of the uniform sample behind the dense quantile boundaries (each range
# keeps its rows with the smallest keys; merged, they are the whole conversion's)


def ranges(path: str, range_bytes: int) -> list[tuple[int, int]]:
  """Byte ranges of at most range_bytes, and at least 16 of them down to 4 MB each, so that small
  files still keep every worker busy. Depends on the file size only: a rerun finds the same
  ranges."""
  size = os.path.getsize(path)
  if size == 0:
    return [(0, 0)]
  step = int(min(range_bytes, max(size // 16 + 1, min(range_bytes, 4 << 20))))
  return [(s, min(s + step, size)) for s in range(0, size, step)]


def iter_chunks(path: str, start: int, end: int, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
  """Complete lines whose first byte lies in [start, end), as (buffer ending in b'\\n', bytes
  read)."""
  with open(path, "rb") as f:
    if start > 0:
      f.seek(start - 1)
      if f.read(1) != b"\n":
        f.readline()
    pos, carry = f.tell(), b""
    while pos < end:
      data = f.read(min(chunk_bytes, end - pos))
      if not data:
        break
      pos += len(data)
      buf = carry + data if carry else data
      if pos >= end:
        if not buf.endswith(b"\n"):
          buf += f.readline()
        carry = b""
        yield (buf if buf.endswith(b"\n") else buf + b"\n"), len(data)
        return
      cut = buf.rfind(b"\n") + 1
      if cut == 0:
        carry = buf
        continue
      carry = buf[cut:]
      yield buf[:cut], len(data)
    if carry:
      yield carry + b"\n", 0


def first_line_number(path: str, start: int, codec: str | None = None) -> int:
  """1-based number of the first line that starts at or after byte `start` of the (decompressed)
  text (one pass up to it)."""
  if start == 0:
    return 1
  n, pos, last = 0, 0, b"\n"
  with open_input(path, codec) as f:
    while pos < start:
      b = f.read(min(1 << 24, start - pos))
      if not b:
        break
      n += b.count(b"\n")
      pos += len(b)
      last = b[-1:]
  if last != b"\n":
    n += 1  # the line crossing `start` belongs to the previous range
  return 1 + n


# ---------------------------------------------------------------------------------------------
# Compressed inputs: segments of the decompressed stream.
#
# A gzip or zstd stream cannot be entered in the middle, so byte ranges of a compressed file cannot
# be read by independent workers. The converting process decompresses the stream once, cuts it
# into segments of about range_bytes ending at a line end (which depend on the content and
# range_bytes only: a rerun finds the same segments) and hands each segment's bytes to the pool;
# at most a few segments are in flight at once, so memory stays bounded by the segment size.

CODECS = {"gzip": "gzip", "zstd": "zstd"}  # files.sniff kind -> pyarrow codec


def codec_of(kind: str | None) -> str | None:
  """The pyarrow codec that streams a file of this sniffed kind, None when it is not one or this
  pyarrow build lacks it."""
  import pyarrow as pa

  codec = CODECS.get(kind or "")
  return codec if codec and pa.Codec.is_available(codec) else None


class _Input:
  """A binary input, decompressed on the fly when `codec` is set; `raw_pos()` is the position in
  the file on disk (for progress bars)."""

  def __init__(self, path: str, codec: str | None):
    import pyarrow as pa

    self._raw = pa.OSFile(path, "rb")
    self._f = pa.CompressedInputStream(self._raw, codec) if codec else self._raw

  def read(self, n: int) -> bytes:
    return self._f.read(n)

  def raw_pos(self) -> int:
    return self._raw.tell()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()
    self._raw.close()


def open_input(path: str, codec: str | None) -> _Input:
  return _Input(path, codec)


def segments(path: str, codec: str, range_bytes: int) -> Iterator[tuple[int, int, bytes, int]]:
  """(start, end, bytes, compressed bytes read for it) of the decompressed text, each segment
  complete lines of about range_bytes (the last may lack its final newline; one is added)."""
  with open_input(path, codec) as f:
    pos, carry, raw0 = 0, b"", 0
    while True:
      data = f.read(range_bytes)
      buf = carry + data if carry else data
      if not data:
        if buf:
          yield pos, pos + len(buf), buf + b"\n", f.raw_pos() - raw0
        return
      cut = buf.rfind(b"\n") + 1
      if cut == 0:
        carry = buf
        continue
      raw = f.raw_pos()
      yield pos, pos + cut, buf[:cut], raw - raw0
      raw0, pos, carry = raw, pos + cut, buf[cut:]


def data_chunks(data: bytes, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
  """A segment (complete lines) -> pieces of complete lines of about chunk_bytes, as
  (buffer, its length)."""
  start, n = 0, len(data)
  while start < n:
    end = data.find(b"\n", min(start + chunk_bytes, n) - 1) + 1 or n
    yield data[start:end], end - start
    start = end


def task_chunks(task: dict) -> Iterator[tuple[bytes, int]]:
  """The task's lines in chunks, as (buffer, bytes to report on the progress bar): a segment's
  bytes scaled to the compressed file's, so the bar and its ETA run over the file on disk."""
  if "data" in task:
    scale = task["raw_bytes"] / max(len(task["data"]), 1)
    for buf, n in data_chunks(task["data"], task["chunk_bytes"]):
      yield buf, int(n * scale)
  else:
    yield from iter_chunks(task["path"], task["start"], task["end"], task["chunk_bytes"])


# ---------------------------------------------------------------------------------------------
# Worker state.

_W: dict[str, Any] = {}


def _die_with_parent() -> None:
  """Linux: a worker gets SIGKILL when the converter dies, so no orphan keeps writing shards that
  a rerun is also writing."""
  try:
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def init_worker(spec_json, progress_bytes, progress_rows, common_dir, in_pool=False):
  if in_pool:
    _die_with_parent()
  _W.clear()
  _W.update(
    spec=compile_config(json.loads(spec_json)),
    pbytes=progress_bytes,
    prows=progress_rows,
    common_dir=common_dir,
    common=None,
  )


def clear_worker() -> None:
  _W.clear()


def _progress(nbytes: int, nrows: int) -> None:
  for key, v in (("pbytes", nbytes), ("prows", nrows)):
    c = _W.get(key)
    if c is not None:
      with c.get_lock():
        c.value += v


def _sorted_report(report: BadLines) -> dict:
  out = report.to_json()
  out["examples"].sort()
  return out


# ---------------------------------------------------------------------------------------------
# Tasks.


def common_task(task: dict) -> dict:
  """One byte range of the common-features file -> its rows of the (unsorted) common table."""
  spec = _W["spec"]
  rep, warn, n_lines, parts = BadLines(), BadLines(), 0, []
  for buf, nbytes in task_chunks(task):
    p = parse.parse_chunk(buf, COMMON_COLS, spec, skeleton=False)
    first = parse.record_bad_lines(rep, p, n_lines)
    if first and task["fail"]:
      return {"index": task["index"], "error": first, "n_lines": n_lines + p.n_lines}
    n = len(p.line)
    r = parse.empty_rows(spec, n)
    parse.place_items(r, spec, p.item_row, p.item_field, p.item_key, p.item_val)
    parts.append(dict(keys=parse.keys_of(p.a, *p.cols[0]), lines=p.line + n_lines, rows=r))
    parse.record_warnings(warn, "feature_num_mismatch", p, np.flatnonzero(p.warn_mismatch), n_lines)
    _progress(nbytes, n)
    n_lines += p.n_lines
  out = {
    "index": task["index"],
    "n_lines": n_lines,
    "report": _sorted_report(rep),
    "warnings": _sorted_report(warn),
  }
  if parts:
    out.update({k: np.concatenate([getattr(x["rows"], k) for x in parts]) for k in COMMON_COLUMNS})
    out["keys"] = np.concatenate([x["keys"] for x in parts])
    out["lines"] = np.concatenate([x["lines"] for x in parts])
  return out


def load_common(directory: str) -> dict[str, np.ndarray]:
  return {
    k: np.load(os.path.join(directory, f"{k}.npy"), mmap_mode="r")
    for k in ("keys",) + COMMON_COLUMNS
  }


@dataclasses.dataclass
class _RangeCounts:
  """What a skeleton range reports besides its shard."""

  spec: Spec
  seed: int
  bad: BadLines = dataclasses.field(default_factory=BadLines)
  warnings: BadLines = dataclasses.field(default_factory=BadLines)
  unknown: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  n_lines: int = 0
  clicks: int = 0
  buys: int = 0

  def __post_init__(self):
    schema = self.spec.schema
    self.dense = DenseStats(len(schema.dense), seed=self.seed, sample=DENSE_SAMPLE)
    self.leakage = LeakageStats(
      schema.labels, [f.name for f in schema.sparse], [f.name for f in schema.dense]
    )
    self.trunc_values = np.zeros(self.spec.n_multi, np.int64)
    self.trunc_rows = np.zeros(self.spec.n_multi, np.int64)


class _FirstBadLine(Exception):
  """--bad_lines=fail: the range's first bad line (line, kind, text), lines read so far."""

  def __init__(self, first, n_lines):
    super().__init__(first)
    self.first, self.n_lines = first, n_lines


def _skeleton_blocks(task: dict, spec: Spec, C: dict, acc: _RangeCounts) -> Iterator[dict]:
  """The range's good rows, joined with the common table, one block per parsed chunk."""
  for buf, nbytes in task_chunks(task):
    p = parse.parse_chunk(buf, SKELETON_COLS, spec, skeleton=True)
    # Join: common_feature_index -> row of the common table.
    keys = parse.keys_of(p.a, *p.cols[3])
    nk = len(C["keys"])
    pos = np.minimum(np.searchsorted(C["keys"], keys), max(nk - 1, 0))
    found = (C["keys"][pos] == keys) if nk else np.zeros(len(keys), bool)
    if not found.all():
      p.reason[p.line[~found]] = KIND_CODES["unknown_common_feature_index"]
    first = parse.record_bad_lines(acc.bad, p, acc.n_lines)
    if first and task["fail"]:
      raise _FirstBadLine(first, acc.n_lines + p.n_lines)
    acc.unknown.update(p.unknown_fields)
    parse.record_warnings(
      acc.warnings, "feature_num_mismatch", p, np.flatnonzero(p.warn_mismatch & found), acc.n_lines
    )
    # Keep the found rows; renumber the items' rows.
    keep_rows = np.flatnonzero(found)
    newidx = np.full(len(found), -1, np.int64)
    newidx[keep_rows] = np.arange(len(keep_rows))
    ik = found[p.item_row] if len(p.item_row) else np.zeros(0, bool)
    cidx = pos[keep_rows]
    n = len(keep_rows)
    r = parse.Rows(
      *(np.asarray(C[k][cidx]) for k in COMMON_COLUMNS[:-1]), dup_single=np.zeros(n, np.int64)
    )
    r.trunc = r.trunc.astype(np.int32, copy=True)
    parse.place_items(
      r, spec, newidx[p.item_row[ik]], p.item_field[ik], p.item_key[ik], p.item_val[ik]
    )
    dup = r.dup_single + np.asarray(C["dup_single"][cidx])
    parse.record_warnings(
      acc.warnings, "duplicate_single_value", p, keep_rows[np.flatnonzero(dup)], acc.n_lines
    )
    acc.trunc_values += r.trunc.sum(0)
    acc.trunc_rows += (r.trunc > 0).sum(0)
    sid, _ = parse.parse_uint(p.a, p.cols[0][0][keep_rows], p.cols[0][1][keep_rows])
    labels = np.stack(
      [p.a[p.cols[1][0][keep_rows]] == 49, p.a[p.cols[2][0][keep_rows]] == 49], 1
    ).astype(np.uint8)
    acc.clicks += int(labels[:, 0].sum())
    acc.buys += int(labels[:, 1].sum())
    acc.dense.add(r.dense)
    _progress(nbytes, n)
    acc.n_lines += p.n_lines
    yield {
      "sparse": r.sparse,
      "mv_ids": r.mv_ids,
      "mv_w": r.mv_w,
      "dense": r.dense,
      "labels": labels,
      "user": r.user,
      "sample_id": sid,
    }


def skeleton_task(task: dict) -> dict:
  """One byte range of the skeleton -> one shard + its sidecar. Returns the sidecar's content."""
  spec: Spec = _W["spec"]
  if _W["common"] is None:
    _W["common"] = load_common(_W["common_dir"])
  t0 = time.time()
  acc = _RangeCounts(spec, seed=task["index"])
  writer = ShardWriter(task["out_dir"], task["shard"], spec.schema, task.get("block_codec"))
  try:
    rows = _skeleton_blocks(task, spec, _W["common"], acc)
    for block in fixed_size_blocks(rows, task["block_rows"]):
      writer.write(block)
      acc.leakage.add(block)
    entry = writer.close()
  except _FirstBadLine as e:
    writer.abort()
    return {"index": task["index"], "error": e.first, "n_lines": e.n_lines}
  except BaseException:
    writer.abort()
    raise
  side = {
    "fingerprint": task["fingerprint"],
    "index": task["index"],
    "range": [task["start"], task["end"]],
    "shard": entry,
    "n_lines": acc.n_lines,
    "bad": _sorted_report(acc.bad),
    "warnings": _sorted_report(acc.warnings),
    "unknown_fields": dict(acc.unknown),
    "dense": acc.dense.to_json(),
    "leakage": acc.leakage.to_json(),
    "truncated_values": acc.trunc_values.tolist(),
    "truncated_rows": acc.trunc_rows.tolist(),
    "clicks": acc.clicks,
    "buys": acc.buys,
    "bytes": task["end"] - task["start"],
    "seconds": time.time() - t0,
  }
  if entry["num_rows"] == 0:
    os.remove(os.path.join(task["out_dir"], task["shard"]))
  else:  # the shard this sidecar vouches for: a resume checks it is still that file
    side["shard_tail"] = digest.tail_digest(os.path.join(task["out_dir"], task["shard"]))
  digest.write_json(os.path.join(task["out_dir"], task["sidecar"]), side)
  return side
