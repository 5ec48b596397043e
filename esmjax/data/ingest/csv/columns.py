"""Columns of a validated CSV / Parquet batch -> block columns: id mapping (vocabulary or hash),
dense values, multi-valued lists with weights, labels, user keys and sample ids.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from esmjax.common.schema import Schema
from esmjax.data.format import ids as ids_lib
from esmjax.data.format.blocks import empty_block
from esmjax.data.ingest.csv.config import Cfg, IdCol, MultiCol


def str_keys(a: pa.Array, numeric: bool = True) -> np.ndarray:
  """An arrow string array -> int64 keys, straight from its buffers: `ids.numeric_or_bytes_keys`
  (integers keep their value, as raw Ali-CCP ids do), or with numeric=False `ids.token_keys`
  (distinct strings -> distinct keys, e.g. "007" and "7")."""
  a = a.cast(pa.string()) if a.type != pa.string() else a
  if isinstance(a, pa.ChunkedArray):
    a = a.combine_chunks()
  bufs = a.buffers()
  off = np.frombuffer(bufs[1], np.int32)[a.offset : a.offset + len(a) + 1]
  data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
  fn = ids_lib.numeric_or_bytes_keys if numeric else ids_lib.token_keys
  return fn(data, off[:-1], np.diff(off))


class Mapper:
  """One id column's mapping (vocab or hash), its counts during pass 1, and in pass 2 how many of
  the values it mapped (`values`, PAD not counted) were OOV (`oov`).

  Ids are whitespace-trimmed like labels and dense values, so a file written with ", " separators
  maps as one written with ",".
  """

  def __init__(self, col: IdCol, pad_values: Sequence[str]):
    self.col, self.pad = col, pa.array(list(pad_values), pa.string())
    self.counts: collections.Counter = collections.Counter()
    self.values = self.oov = 0
    self.vocab: ids_lib.Vocab | None = None
    self._keys = self._ids = None  # vocab as sorted 64-bit keys of its strings -> ids
    self.salt = ids_lib.field_salt(col.column)

  def count(self, a: pa.Array) -> None:
    if self.col.mapping != "vocab" or self.vocab is not None:
      return
    a = pc.utf8_trim_whitespace(a)
    a = pc.filter(a, pc.invert(pc.is_in(a, value_set=self.pad)))
    vc = pc.value_counts(a)
    self.counts.update(dict(zip(vc.field(0).to_pylist(), vc.field(1).to_pylist(), strict=True)))

  def finish(self) -> None:
    if self.col.mapping == "vocab" and self.vocab is None:
      self.vocab = ids_lib.Vocab.from_counts(
        self.counts, self.col.min_count, self.col.max_vocab or None
      )
    self.counts = collections.Counter()
    if self.vocab is not None:  # lookups by sorted keys: no per-batch hash table of the vocabulary
      keys = str_keys(pa.array(self.vocab.values, pa.string()), numeric=False)
      order = np.argsort(keys)
      self._keys = keys[order]
      self._ids = (order + ids_lib.NUM_RESERVED).astype(np.int32)

  @property
  def vocab_size(self) -> int:
    if self.col.mapping == "hash":
      return self.col.buckets + ids_lib.NUM_RESERVED
    return self.vocab.size

  def map(self, a: pa.Array) -> np.ndarray:
    a = pc.utf8_trim_whitespace(a)
    is_pad = np.asarray(pc.is_in(a, value_set=self.pad))
    if self.col.mapping == "hash":
      out = ids_lib.hash_ids(str_keys(a), self.salt, self.col.buckets)
    elif not len(self._keys):
      out = np.full(len(a), ids_lib.OOV, np.int32)
    else:
      k = str_keys(a, numeric=False)
      pos = np.minimum(np.searchsorted(self._keys, k), len(self._keys) - 1)
      out = np.where(self._keys[pos] == k, self._ids[pos], ids_lib.OOV).astype(np.int32)
    out[is_pad] = ids_lib.PAD
    self.values += int(len(out) - is_pad.sum())
    self.oov += int((out == ids_lib.OOV).sum())
    return out

  def oov_report(self) -> dict:
    """{"values", "oov", "share"} of the values mapped so far (share 0 when there were none)."""
    share = self.oov / self.values if self.values else 0.0
    return {"values": self.values, "oov": self.oov, "share": round(share, 6)}


def dense_values(a: pa.Array) -> tuple[np.ndarray, np.ndarray]:
  """Validated string column -> (float32 values with 0 where empty, missing mask)."""
  missing = np.asarray(pc.equal(pc.utf8_length(a), 0))
  filled = pc.if_else(pa.array(missing), "0", pc.utf8_trim_whitespace(a))
  return np.asarray(pc.cast(filled, pa.float64())).astype(np.float32), missing


def multi_values(
  a: pa.Array, m: MultiCol, mapper: Mapper
) -> tuple[np.ndarray, np.ndarray, int, int]:
  """A multi-valued column -> ids [n, max_len], weights [n, max_len], values dropped, rows
  truncated."""
  n = len(a)
  lists = pc.split_pattern(a, m.sep)
  lengths = np.asarray(pc.list_value_length(lists)).astype(np.int64)
  items = pc.list_flatten(lists)
  if m.weight_sep:
    parts = pc.split_pattern(items, m.weight_sep, max_splits=1)
    has_w = np.asarray(pc.equal(pc.list_value_length(parts), 2))
    tok = pc.list_element(parts, 0)
    w = np.ones(len(items), np.float32)
    if has_w.any():
      wt = pc.list_element(pc.filter(parts, pa.array(has_w)), 1)
      w[has_w] = np.asarray(pc.cast(pc.utf8_trim_whitespace(wt), pa.float64())).astype(np.float32)
  else:
    tok, w = items, np.ones(len(items), np.float32)
  idv = mapper.map(tok)
  row = np.repeat(np.arange(n), lengths)
  rank = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  keep = (rank < m.max_len) & (idv != ids_lib.PAD)  # empty items ("" between separators) are absent
  ids = np.zeros((n, m.max_len), np.int32)
  wts = np.zeros((n, m.max_len), np.float32)
  ids[row[keep], rank[keep]] = idv[keep]
  wts[row[keep], rank[keep]] = w[keep]
  over = (rank >= m.max_len) & (idv != ids_lib.PAD)
  return ids, wts, int(over.sum()), int(len(np.unique(row[over])))


def make_block(
  good: pa.RecordBatch,
  cfg: Cfg,
  schema: Schema,
  mappers: Sequence[Mapper],
  trunc: dict,
  missing_dense: collections.Counter,
  first_row: int,
) -> dict[str, np.ndarray]:
  """The good rows of a batch as a block; truncated multi-valued values and empty dense cells are
  counted into `trunc` and `missing_dense`."""
  n = good.num_rows
  cols = {name: good.column(i) for i, name in enumerate(good.schema.names)}
  b = empty_block(schema, n)
  for j, (f, mapper) in enumerate(zip(cfg.sparse, mappers[: len(cfg.sparse)], strict=True)):
    b["sparse"][:, j] = mapper.map(cols[f.column])
  for off, m, mapper in zip(schema.mv_offsets, cfg.multi, mappers[len(cfg.sparse) :], strict=True):
    ids, wts, dropped, rows = multi_values(cols[m.ids.column], m, mapper)
    b["mv_ids"][:, off : off + m.max_len] = ids
    b["mv_w"][:, off : off + m.max_len] = wts
    trunc[m.ids.column]["values"] += dropped
    trunc[m.ids.column]["rows"] += rows
  for j, c in enumerate(cfg.dense):
    b["dense"][:, j], miss = dense_values(cols[c])
    if miss.any():
      missing_dense[c] += int(miss.sum())
  for k, (_, col) in enumerate(cfg.labels):
    b["labels"][:, k] = np.asarray(pc.equal(pc.utf8_trim_whitespace(cols[col]), "1"))
  b["user"][:] = str_keys(pc.utf8_trim_whitespace(cols[cfg.user])) if cfg.user else -1
  if cfg.sample_id:
    sid = pc.utf8_trim_whitespace(cols[cfg.sample_id])
    b["sample_id"][:] = np.asarray(pc.cast(sid, pa.int64()))
  else:
    b["sample_id"][:] = np.arange(first_row, first_row + n)
  return b
