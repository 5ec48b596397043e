r"""Preprocessed logs (CSV or Parquet with a declared schema) -> an esmjax blocked dataset.

    python -m esmjax.data.csv_ingest --config=configs/data/rechub_aliccp.py \
        --input=train.csv[,more.csv] --out_dir=data/rechub_train [--stats_from=<train dataset>] \
        [--config.bad_lines=fail] [--config.id_mapping=hash]

    ingest(config, input_paths, out_dir, stats_from=None) -> manifest

The config (an ml_collections ConfigDict; see `base_config` and configs/data/*.py) says which
columns are single-valued ids (`sparse`), multi-valued ids (`multi`: cell split on `sep`, optional
`id<weight_sep>weight` items, first `max_len` kept, the rest counted), dense numbers (`dense`),
labels (`labels`: dataset label -> column), the user key (`user`) and the sample id (`sample_id`).

Two streaming passes in bounded memory (CSV in 4 MB blocks, Parquet in batches of `read_rows`),
pyarrow doing the parsing:
1. validate every row (bad lines counted per kind with their file:line, or the first one raised
   with `bad_lines='fail'`), count id values (vocabularies) and dense statistics (mean/std, and
   quantile `boundaries` from a bounded seeded sample);
2. map and write the good rows: `id_mapping='vocab'` (frequency-thresholded vocabulary, most
   frequent first, PAD 0, OOV 1; saved to `<out_dir>/vocabs.json`) or `'hash'` (`ids.hash_ids`
   into `hash_buckets`), per column overridable in `field_overrides`.

The test split must reuse the train split's vocabularies and dense statistics: `stats_from=`.
Cells equal to one of `pad_values` (default: empty) are absent -> PAD. The user key is the user
column's integer value, or a 64-bit hash of its text when it is not an integer (-1 without a user
column); `sample_id` is that column, or the running row number over all inputs.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import time
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from esmjax.data import dataset as ds_lib
from esmjax.data import ids as ids_lib

BAD_KINDS = {
    "empty_file": "the file has no data rows",
    "column_count": "wrong number of columns",
    "bad_label": "a label is not 0 or 1",
    "buy_without_click": "click=0 with a post-click label = 1",
    "bad_dense": "a dense value is not a number",
    "bad_multi": "a multi-valued cell has a non-numeric weight",
    "bad_sample_id": "sample_id is not an integer",
}
MAX_EXAMPLES = 5
FORMATS = ("auto", "csv", "parquet")
HEADER_MODES = ("auto", "yes", "no")
BAD_LINES_MODES = ("skip", "fail")
_FLOAT_RE = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_INT_RE = r"^\s*-?\d{1,18}\s*$"
_KNOWN_KEYS = {"format", "delimiter", "header", "columns", "labels", "sparse", "multi", "dense", "user",
               "sample_id", "id_mapping", "hash_buckets", "min_count", "max_vocab", "field_overrides",
               "pad_values", "dense_buckets", "bad_lines", "block_rows", "blocks_per_shard", "read_rows",
               "name"}


class IngestError(RuntimeError):
  """Stops an ingestion; the message names the file and line, the config key, or the path."""


def base_config():
  """Defaults every configs/data/*.py starts from."""
  import ml_collections

  c = ml_collections.ConfigDict()
  c.name = ""
  c.format = "auto"  # auto (by extension) | csv | parquet
  c.delimiter = ","
  c.header = "auto"  # auto: the first line is a header when it equals `columns` (or `columns` is empty)
  c.columns = ()  # names in file order; required for files without a header
  c.labels = {"click": "click", "buy": "buy"}  # dataset label -> column, in dataset order
  c.sparse = ()  # single-valued id columns
  c.multi = {}  # column -> dict(sep="|", weight_sep="", max_len=16, pooling="sum")
  c.dense = ()  # numeric columns
  c.user = ""  # user-key column ("" -> -1)
  c.sample_id = ""  # sample-id column ("" -> running row number)
  c.id_mapping = "vocab"  # vocab | hash, for every id column unless overridden
  c.hash_buckets = 1 << 20
  c.min_count = 1  # vocab: values seen fewer times map to OOV
  c.max_vocab = 0  # vocab: 0 = unlimited, else at most this many ids including PAD and OOV
  c.field_overrides = {}  # column -> dict(mapping=..., buckets=..., min_count=..., max_vocab=...)
  c.pad_values = ("",)
  c.dense_buckets = 16
  c.bad_lines = "skip"  # skip | fail
  c.block_rows = 0  # rows per block; 0: about 1 MB per block (aliccp.auto_block_rows)
  c.blocks_per_shard = 64
  c.read_rows = 1 << 16  # rows per parsed batch (bounds memory)
  return c


# ---------------------------------------------------------------------------------------------
# Config validation.


@dataclasses.dataclass(frozen=True)
class _IdCol:
  column: str
  mapping: str
  buckets: int
  min_count: int
  max_vocab: int


@dataclasses.dataclass(frozen=True)
class _MultiCol:
  ids: _IdCol
  sep: str
  weight_sep: str
  max_len: int
  pooling: str


@dataclasses.dataclass(frozen=True)
class _Cfg:
  raw: dict
  labels: tuple[tuple[str, str], ...]
  sparse: tuple[_IdCol, ...]
  multi: tuple[_MultiCol, ...]
  dense: tuple[str, ...]
  user: str
  sample_id: str

  @property
  def needed(self) -> list[str]:
    cols = [c for _, c in self.labels] + [f.column for f in self.sparse] + [m.ids.column for m in self.multi]
    cols += list(self.dense) + [c for c in (self.user, self.sample_id) if c]
    return list(dict.fromkeys(cols))


def _check_choice(key, value, allowed):
  if value not in allowed:
    raise IngestError(f"config.{key}={value!r}; allowed: {list(allowed)}")


def _validate(config) -> _Cfg:
  raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  full = base_config().to_dict()
  unknown = sorted(set(raw) - _KNOWN_KEYS)
  if unknown:
    raise IngestError(f"config has unknown key(s) {unknown}; allowed: {sorted(_KNOWN_KEYS)}")
  full.update(raw)
  raw = full
  _check_choice("format", raw["format"], FORMATS)
  _check_choice("header", raw["header"], HEADER_MODES)
  _check_choice("bad_lines", raw["bad_lines"], BAD_LINES_MODES)
  _check_choice("id_mapping", raw["id_mapping"], ids_lib.MAPPINGS)
  if not raw["labels"]:
    raise IngestError("config.labels is empty; give at least {'click': <column>}")
  for lab in raw["labels"]:
    _check_choice(f"labels[{lab!r}] (dataset label)", lab, ds_lib.LABELS)
  if "click" not in raw["labels"]:
    raise IngestError("config.labels needs 'click' (the entire-space models need the click label)")
  for k in ("read_rows", "hash_buckets", "dense_buckets", "blocks_per_shard"):
    if int(raw[k]) < 1:
      raise IngestError(f"config.{k}={raw[k]}; must be >= 1")
  if int(raw["block_rows"]) < 0:
    raise IngestError(f"config.block_rows={raw['block_rows']}; must be >= 1, or 0 for automatic")

  overrides = raw.get("field_overrides") or {}
  id_cols = list(raw["sparse"]) + list(raw["multi"])
  for col in overrides:
    if col not in id_cols:
      raise IngestError(f"config.field_overrides[{col!r}]: not an id column (sparse or multi): {id_cols}")

  def id_col(col: str) -> _IdCol:
    o = dict(overrides.get(col, {}))
    bad = set(o) - {"mapping", "buckets", "min_count", "max_vocab"}
    if bad:
      raise IngestError(f"config.field_overrides[{col!r}]: unknown key(s) {sorted(bad)}; allowed: mapping, buckets, min_count, max_vocab")
    mapping = o.get("mapping", raw["id_mapping"])
    _check_choice(f"field_overrides[{col!r}].mapping", mapping, ids_lib.MAPPINGS)
    return _IdCol(col, mapping, int(o.get("buckets", raw["hash_buckets"])), int(o.get("min_count", raw["min_count"])),
                  int(o.get("max_vocab", raw["max_vocab"])))

  multi = []
  for col, m in (raw["multi"] or {}).items():
    m = dict(m)
    bad = set(m) - {"sep", "weight_sep", "max_len", "pooling"}
    if bad:
      raise IngestError(f"config.multi[{col!r}]: unknown key(s) {sorted(bad)}; allowed: sep, weight_sep, max_len, pooling")
    pooling = m.get("pooling", "sum")
    _check_choice(f"multi[{col!r}].pooling", pooling, ("sum", "mean"))
    if not m.get("sep"):
      raise IngestError(f"config.multi[{col!r}].sep is empty")
    if int(m.get("max_len", 16)) < 1:
      raise IngestError(f"config.multi[{col!r}].max_len={m.get('max_len')}; must be >= 1")
    multi.append(_MultiCol(id_col(col), m["sep"], m.get("weight_sep", ""), int(m.get("max_len", 16)), pooling))
  # Dataset label order is the canonical one (click, buy, cart, wish, daction): ConfigDict sorts keys.
  labels = tuple((l, raw["labels"][l]) for l in ds_lib.LABELS if l in raw["labels"])
  cfg = _Cfg(raw=raw, labels=labels, sparse=tuple(id_col(c) for c in raw["sparse"]),
             multi=tuple(multi), dense=tuple(raw["dense"]), user=raw["user"] or "", sample_id=raw["sample_id"] or "")
  names = [f.column for f in cfg.sparse] + [m.ids.column for m in cfg.multi] + list(cfg.dense)
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise IngestError(f"config: column(s) {dup} appear in more than one of sparse / multi / dense")
  return cfg


# ---------------------------------------------------------------------------------------------
# Reading: batches of string columns with the physical line number of each row.


class _Bad:
  """Bad rows per kind with the first examples; with fail, the first in file order raises.

  Rows rejected by the CSV parser (wrong column count) are reported as it parses, possibly ahead of
  the batch being validated, so events wait in `pending` until every line before them was checked.
  """

  def __init__(self, fail: bool):
    self.fail = fail
    self.counts: collections.Counter = collections.Counter()
    self.examples: list[list] = []
    self._pending: list[tuple[int, str, str, str]] = []  # (line, where, kind, text)

  def note(self, line: int, where: str, kind: str, text: str) -> None:
    self._pending.append((int(line), where, kind, text))

  def flush(self, upto: int | None = None) -> None:
    """Commits the events on lines <= upto (all when None), in line order."""
    ready = sorted(e for e in self._pending if upto is None or e[0] <= upto)
    self._pending = [e for e in self._pending if not (upto is None or e[0] <= upto)]
    for _, where, kind, text in ready:
      if self.fail:
        raise IngestError(f"bad_lines=fail: {where}: {kind} ({BAD_KINDS[kind]}): {text[:200]!r}")
      self.counts[kind] += 1
      if sum(1 for e in self.examples if e[1] == kind) < MAX_EXAMPLES:
        self.examples.append([where, kind, text[:200]])

  def to_json(self) -> dict:
    return {"counts": dict(self.counts), "examples": self.examples}


def _fmt(path: str) -> str:
  return "parquet" if path.endswith((".parquet", ".pq")) else "csv"


def _first_line(path: str) -> str:
  with open(path, "rb") as f:
    return f.readline().decode("utf-8", "replace").rstrip("\r\n")


def _csv_batches(path: str, cfg: _Cfg, bad: _Bad | None) -> Iterator[tuple[pa.RecordBatch, np.ndarray, str]]:
  import pyarrow.csv as pcsv

  raw = cfg.raw
  first = _first_line(path)
  cols = list(raw["columns"])
  header_cells = [c.strip() for c in first.split(raw["delimiter"])]
  if raw["header"] == "yes" or (raw["header"] == "auto" and (not cols or header_cells == cols)):
    names, skip = (cols or header_cells), 1
    if cols and header_cells != cols and raw["header"] == "yes":
      raise IngestError(f"{path}: header {header_cells} differs from config.columns {cols}")
  else:
    if not cols:
      raise IngestError(f"{path}: config.header={raw['header']!r} needs config.columns (the file has no header)")
    names, skip = cols, 0
  missing = [c for c in cfg.needed if c not in names]
  if missing:
    raise IngestError(f"{path}: column(s) {missing} named in the config are not in the file's columns {names}")
  invalid: list[tuple[int, str]] = []

  def on_invalid(row):
    invalid.append((row.number, row.text))
    return "skip"

  reader = pcsv.open_csv(
      path,
      read_options=pcsv.ReadOptions(use_threads=False, column_names=names, skip_rows=skip, block_size=1 << 22),
      parse_options=pcsv.ParseOptions(delimiter=raw["delimiter"], invalid_row_handler=on_invalid,
                                      ignore_empty_lines=False),
      convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in names}, include_columns=cfg.needed,
                                          strings_can_be_null=False, quoted_strings_can_be_null=False))
  next_line, done = skip + 1, set()
  for batch in reader:
    for num, text in invalid:
      if num is not None and num not in done:
        done.add(num)
        if text.strip() and bad is not None:
          bad.note(num, f"{path}:{num}", "column_count", text)
    invalid.clear()
    n = batch.num_rows
    if not any(x >= next_line for x in done):
      lines = np.arange(next_line, next_line + n)
      next_line += n
    else:  # physical line numbers, skipping those of rows dropped as invalid
      lines = np.empty(n, np.int64)
      for i in range(n):
        while next_line in done:
          next_line += 1
        lines[i] = next_line
        next_line += 1
    yield batch, lines, ""
  for num, text in invalid:
    if num is not None and num not in done and text.strip() and bad is not None:
      bad.note(num, f"{path}:{num}", "column_count", text)


def _parquet_batches(path: str, cfg: _Cfg, bad) -> Iterator[tuple[pa.RecordBatch, np.ndarray, str]]:
  import pyarrow.parquet as pq

  f = pq.ParquetFile(path)
  names = f.schema_arrow.names
  missing = [c for c in cfg.needed if c not in names]
  if missing:
    raise IngestError(f"{path}: column(s) {missing} named in the config are not in the file's columns {names}")
  row = 1
  for batch in f.iter_batches(batch_size=int(cfg.raw["read_rows"]), columns=cfg.needed):
    arrays = [pc.cast(batch.column(i), pa.string()) if batch.column(i).type != pa.string() else batch.column(i)
              for i in range(batch.num_columns)]
    arrays = [pc.fill_null(a, "") for a in arrays]
    yield pa.RecordBatch.from_arrays(arrays, names=batch.schema.names), np.arange(row, row + batch.num_rows), "row "
    row += batch.num_rows


def _batches(path: str, cfg: _Cfg, bad) -> Iterator[tuple[pa.RecordBatch, np.ndarray, str]]:
  fmt = cfg.raw["format"] if cfg.raw["format"] != "auto" else _fmt(path)
  if os.path.getsize(path) == 0:
    return
  yield from (_csv_batches if fmt == "csv" else _parquet_batches)(path, cfg, bad)


# ---------------------------------------------------------------------------------------------
# Validation of a batch (both passes) and conversion (pass 2).


def _good_rows(batch: pa.RecordBatch, lines: np.ndarray, where: str, path: str, cfg: _Cfg, bad: _Bad | None) -> np.ndarray:
  """Mask of the rows to keep; bad ones are reported (pass 1) in line order, first reason only."""
  n = batch.num_rows
  reason = np.zeros(n, np.int64)  # 0 ok, -1 blank, else index into kinds
  kinds = list(BAD_KINDS)
  cols = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
  blank = np.ones(n, bool)
  for c in cfg.needed:
    blank &= np.asarray(pc.equal(pc.utf8_length(cols[c]), 0))
  reason[blank] = -1

  def flag(mask, kind):
    reason[(reason == 0) & mask] = kinds.index(kind) + 1

  lab = {}
  for name, col in cfg.labels:
    a = pc.utf8_trim_whitespace(cols[col])
    lab[name] = np.asarray(pc.equal(a, "1"))
    flag(~np.asarray(pc.is_in(a, value_set=pa.array(["0", "1"]))), "bad_label")
  for name in lab:
    if name != "click":
      flag(lab[name] & ~lab["click"], "buy_without_click")
  for c in cfg.dense:
    a = cols[c]
    ok = np.asarray(pc.or_(pc.equal(pc.utf8_length(a), 0), pc.match_substring_regex(a, _FLOAT_RE)))
    flag(~ok, "bad_dense")
  for m in cfg.multi:
    if m.weight_sep:  # every `id<weight_sep>weight` item needs a numeric weight
      lists = pc.split_pattern(cols[m.ids.column], m.sep)
      row_of = np.repeat(np.arange(n), np.asarray(pc.list_value_length(lists)))
      parts = pc.split_pattern(pc.list_flatten(lists), m.weight_sep, max_splits=1)
      has_w = np.asarray(pc.equal(pc.list_value_length(parts), 2))
      okw = np.ones(len(has_w), bool)
      if has_w.any():
        wt = pc.list_element(pc.filter(parts, pa.array(has_w)), 1)
        okw[has_w] = np.asarray(pc.match_substring_regex(wt, _FLOAT_RE))
      badrow = np.zeros(n, bool)
      badrow[row_of[~okw]] = True
      flag(badrow, "bad_multi")
  if cfg.sample_id:
    flag(~np.asarray(pc.match_substring_regex(cols[cfg.sample_id], _INT_RE)), "bad_sample_id")
  if bad is not None:
    for code in np.unique(reason[reason > 0]):  # the first rows of each kind as examples, the rest counted
      rows = np.flatnonzero(reason == code)
      kind = kinds[int(code) - 1]
      for i in rows[:MAX_EXAMPLES]:  # the batch's first bad row is always among these
        text = " ".join(f"{c}={cols[c][int(i)].as_py()}" for c in cfg.needed)
        bad.note(int(lines[i]), f"{path}:{where}{int(lines[i])}", kind, text)
      bad.counts[kind] += max(0, len(rows) - MAX_EXAMPLES)
    if n:
      bad.flush(int(lines[-1]))
  return reason == 0


def _str_keys(a: pa.Array, numeric: bool = True) -> np.ndarray:
  """An arrow string array -> int64 keys, straight from its buffers: `ids.numeric_or_bytes_keys`
  (integers keep their value, as raw Ali-CCP ids do), or with numeric=False `ids.token_keys`
  (distinct strings -> distinct keys, e.g. "007" and "7")."""
  a = a.cast(pa.string()) if a.type != pa.string() else a
  if isinstance(a, pa.ChunkedArray):
    a = a.combine_chunks()
  bufs = a.buffers()
  off = np.frombuffer(bufs[1], np.int32)[a.offset:a.offset + len(a) + 1]
  data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
  fn = ids_lib.numeric_or_bytes_keys if numeric else ids_lib.token_keys
  return fn(data, off[:-1], np.diff(off))


class _Mapper:
  """One id column's mapping (vocab or hash), its counts during pass 1."""

  def __init__(self, col: _IdCol, pad_values: Sequence[str]):
    self.col, self.pad = col, pa.array(list(pad_values), pa.string())
    self.counts: collections.Counter = collections.Counter()
    self.vocab: ids_lib.Vocab | None = None
    self._keys = self._ids = None  # vocab as sorted 64-bit keys of its strings -> ids
    self.salt = ids_lib.field_salt(col.column)

  def count(self, a: pa.Array) -> None:
    if self.col.mapping != "vocab" or self.vocab is not None:
      return
    a = pc.filter(a, pc.invert(pc.is_in(a, value_set=self.pad)))
    vc = pc.value_counts(a)
    self.counts.update(dict(zip(vc.field(0).to_pylist(), vc.field(1).to_pylist())))

  def finish(self) -> None:
    if self.col.mapping == "vocab" and self.vocab is None:
      self.vocab = ids_lib.Vocab.from_counts(self.counts, self.col.min_count, self.col.max_vocab or None)
    self.counts = collections.Counter()
    if self.vocab is not None:  # lookups by sorted keys: no per-batch hash table of the whole vocabulary
      keys = _str_keys(pa.array(self.vocab.values, pa.string()), numeric=False)
      order = np.argsort(keys)
      self._keys = keys[order]
      self._ids = (order + ids_lib.NUM_RESERVED).astype(np.int32)

  @property
  def vocab_size(self) -> int:
    if self.col.mapping == "hash":
      return self.col.buckets + ids_lib.NUM_RESERVED
    return self.vocab.size

  def map(self, a: pa.Array) -> np.ndarray:
    is_pad = np.asarray(pc.is_in(a, value_set=self.pad))
    if self.col.mapping == "hash":
      out = ids_lib.hash_ids(_str_keys(a), self.salt, self.col.buckets)
    elif not len(self._keys):
      out = np.full(len(a), ids_lib.OOV, np.int32)
    else:
      k = _str_keys(a, numeric=False)
      pos = np.minimum(np.searchsorted(self._keys, k), len(self._keys) - 1)
      out = np.where(self._keys[pos] == k, self._ids[pos], ids_lib.OOV).astype(np.int32)
    out[is_pad] = ids_lib.PAD
    return out


class _DenseAcc:
  """Per column: count, mean and M2 merged batch by batch (Chan et al.: no cancellation), and a
  bounded seeded sample for the quantile boundaries."""

  def __init__(self, d: int, sample: int = 100_000, seed: int = 0):
    self.n, self.mean, self.m2 = np.zeros(d), np.zeros(d), np.zeros(d)
    self.rng, self.cap = np.random.default_rng(seed), sample
    self.samples: list[list[np.ndarray]] = [[] for _ in range(d)]
    self.kept = np.zeros(d, np.int64)

  def add(self, j: int, x: np.ndarray) -> None:
    if not len(x):
      return
    x = x.astype(np.float64)
    nb, mb = len(x), float(x.mean())
    m2b = float(np.square(x - mb).sum())
    na = self.n[j]
    delta = mb - self.mean[j]
    self.n[j] = na + nb
    self.mean[j] += delta * nb / self.n[j]
    self.m2[j] += m2b + delta * delta * na * nb / self.n[j]
    take = x if self.kept[j] + len(x) <= self.cap else x[self.rng.random(len(x)) < self.cap / max(self.n[j], 1)]
    self.samples[j].append(take.astype(np.float32))
    self.kept[j] += len(take)
    if self.kept[j] > 2 * self.cap:  # bounded: thin the sample back down
      allv = np.concatenate(self.samples[j])
      allv = allv[self.rng.choice(len(allv), self.cap, replace=False)]
      self.samples[j], self.kept[j] = [allv], len(allv)

  def fields(self, names: Sequence[str], buckets: int) -> list[ds_lib.DenseField]:
    out = []
    for j, name in enumerate(names):
      n = self.n[j]
      mean = float(self.mean[j]) if n else 0.0
      std = float(np.sqrt(self.m2[j] / n)) if n else 1.0
      sample = np.concatenate(self.samples[j]) if self.samples[j] else np.zeros(0)
      edges = np.unique(np.quantile(sample, np.arange(1, buckets) / buckets)) if len(sample) else np.zeros(0)
      std = std if std > 1e-12 * max(1.0, abs(mean)) else 1.0  # a constant column: 1, not 0, to divide by
      out.append(ds_lib.DenseField(name, mean, std, tuple(float(e) for e in edges)))
    return out


def _dense_values(a: pa.Array) -> tuple[np.ndarray, np.ndarray]:
  """Validated string column -> (float32 values with 0 where empty, missing mask)."""
  missing = np.asarray(pc.equal(pc.utf8_length(a), 0))
  filled = pc.if_else(pa.array(missing), "0", pc.utf8_trim_whitespace(a))
  return np.asarray(pc.cast(filled, pa.float64())).astype(np.float32), missing


def _multi_values(a: pa.Array, m: _MultiCol, mapper: _Mapper) -> tuple[np.ndarray, np.ndarray, int, int]:
  """A multi-valued column -> ids [n, max_len], weights [n, max_len], values dropped, rows truncated."""
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


# ---------------------------------------------------------------------------------------------
# The two passes.


def ingest(config, input_paths: Sequence[str] | str, out_dir: str, *, stats_from: str | None = None,
           progress: bool = True) -> dict:
  """Ingests CSV/Parquet files into `out_dir` (see the module doc); returns the manifest."""
  t0 = time.time()
  cfg = _validate(config)
  paths = [p for p in ([input_paths] if isinstance(input_paths, str) else list(input_paths)) if p]
  if not paths:
    raise IngestError("no input files given (--input)")
  for p in paths:
    if not os.path.isfile(p):
      raise IngestError(f"input file does not exist: {p}")
  if not out_dir:
    raise IngestError("--out_dir is required")
  fail = cfg.raw["bad_lines"] == "fail"
  mappers = [_Mapper(c, cfg.raw["pad_values"]) for c in (*cfg.sparse, *(m.ids for m in cfg.multi))]
  dense_fields = None
  if stats_from:
    dense_fields = _load_stats(stats_from, cfg, mappers)

  # Pass 1: validation, vocabularies, dense statistics.
  bad = _Bad(fail)
  acc = _DenseAcc(len(cfg.dense))
  n_good, missing_dense = 0, collections.Counter()
  for path in paths:
    rows_here = 0
    for batch, lines, where in _batches(path, cfg, bad):
      ok = _good_rows(batch, lines, where, path, cfg, bad)
      rows_here += batch.num_rows
      if not ok.any():
        continue
      good = batch.filter(pa.array(ok))
      cols = {name: good.column(i) for i, name in enumerate(good.schema.names)}
      for mp_ in mappers:
        if mp_.col.mapping == "vocab":
          col = cols[mp_.col.column]
          mc = next((m for m in cfg.multi if m.ids.column == mp_.col.column), None)
          if mc is not None:
            col = pc.list_flatten(pc.split_pattern(col, mc.sep))
            if mc.weight_sep:
              col = pc.list_element(pc.split_pattern(col, mc.weight_sep, max_splits=1), 0)
          mp_.count(col)
      if dense_fields is None:
        for j, c in enumerate(cfg.dense):
          x, miss = _dense_values(cols[c])
          acc.add(j, x)
      n_good += good.num_rows
    bad.flush()  # column-count rows after the last batch
    if rows_here == 0:
      bad.note(0, path, "empty_file", "(no data rows)")
      bad.flush()
  for mp_ in mappers:
    mp_.finish()
  if dense_fields is None:
    dense_fields = acc.fields(cfg.dense, int(cfg.raw["dense_buckets"]))
  schema = ds_lib.Schema(
      sparse=tuple(ds_lib.SparseField(f.column, mp_.vocab_size) for f, mp_ in zip(cfg.sparse, mappers)),
      multi=tuple(ds_lib.MultiField(m.ids.column, mp_.vocab_size, m.max_len, m.pooling)
                  for m, mp_ in zip(cfg.multi, mappers[len(cfg.sparse):])),
      dense=tuple(dense_fields), labels=tuple(name for name, _ in cfg.labels))

  # Pass 2: map and write.
  os.makedirs(out_dir, exist_ok=True)
  for name in os.listdir(out_dir):  # a previous dataset here is replaced, never mixed
    if name in (ds_lib.MANIFEST, "vocabs.json") or (name.startswith("shard-") and ds_lib.SHARD_SUFFIX in name):
      os.remove(os.path.join(out_dir, name))
  trunc = {m.ids.column: {"values": 0, "rows": 0} for m in cfg.multi}  # filled while writing
  state = {"sample": 0}

  def blocks():
    for path in paths:
      for batch, lines, where in _batches(path, cfg, None):
        ok = _good_rows(batch, lines, where, path, cfg, None)
        first_row = state["sample"]
        state["sample"] += int(ok.sum())
        if not ok.any():
          continue
        good = batch.filter(pa.array(ok))
        yield _block(good, cfg, schema, mappers, trunc, missing_dense, first_row)

  vocabs = {mp_.col.column: mp_.vocab.to_json() for mp_ in mappers if mp_.vocab is not None}
  extra = {"ingest": {
      "config": cfg.raw, "inputs": [os.path.abspath(p) for p in paths], "rows_written": n_good,
      "id_mapping": {mp_.col.column: (mp_.col.mapping if mp_.col.mapping == "vocab" else f"hash/{mp_.col.buckets}")
                     for mp_ in mappers},
      "vocab_file": "vocabs.json" if vocabs else None, "stats_from": stats_from,
      "bad_lines": {"mode": cfg.raw["bad_lines"], **bad.to_json()},
      "truncated": trunc,
      "missing_dense": missing_dense, "user_key": cfg.user or None, "sample_id": cfg.sample_id or "row number",
  }}
  if vocabs:
    tmp = os.path.join(out_dir, "vocabs.json.tmp")
    with open(tmp, "w") as f:
      json.dump(vocabs, f)
    os.replace(tmp, os.path.join(out_dir, "vocabs.json"))
  source = {"format": cfg.raw["format"], "name": cfg.raw.get("name", ""), "made_by": "esmjax.data.csv_ingest"}
  from esmjax.data.aliccp import auto_block_rows

  block_rows = int(cfg.raw["block_rows"]) or auto_block_rows(schema)
  manifest = ds_lib.write_dataset(out_dir, schema, blocks(), block_rows=block_rows,
                                  blocks_per_shard=int(cfg.raw["blocks_per_shard"]), source=source, extra=extra)
  if progress:
    if bad.counts:
      print(f"bad rows skipped: " + ", ".join(f"{k}={v}" for k, v in sorted(bad.counts.items())), file=sys.stderr)
      for where, kind, text in bad.examples:
        print(f"  {where}: {kind} ({BAD_KINDS[kind]}): {text!r}", file=sys.stderr)
    print(f"{out_dir}: {manifest['num_rows']:,} rows, {manifest['num_blocks']} block(s) in "
          f"{time.time() - t0:.1f} s", file=sys.stderr)
  return manifest


def _block(good: pa.RecordBatch, cfg: _Cfg, schema: ds_lib.Schema, mappers, trunc, missing_dense,
           first_row: int) -> dict[str, np.ndarray]:
  n = good.num_rows
  cols = {name: good.column(i) for i, name in enumerate(good.schema.names)}
  b = ds_lib.empty_block(schema, n)
  for j, (f, mp_) in enumerate(zip(cfg.sparse, mappers)):
    b["sparse"][:, j] = mp_.map(cols[f.column])
  for off, m, mp_ in zip(schema.mv_offsets, cfg.multi, mappers[len(cfg.sparse):]):
    ids, wts, dropped, rows = _multi_values(cols[m.ids.column], m, mp_)
    b["mv_ids"][:, off:off + m.max_len] = ids
    b["mv_w"][:, off:off + m.max_len] = wts
    trunc[m.ids.column]["values"] += dropped
    trunc[m.ids.column]["rows"] += rows
  for j, c in enumerate(cfg.dense):
    b["dense"][:, j], miss = _dense_values(cols[c])
    if miss.any():
      missing_dense[c] += int(miss.sum())
  for k, (_, col) in enumerate(cfg.labels):
    b["labels"][:, k] = np.asarray(pc.equal(pc.utf8_trim_whitespace(cols[col]), "1"))
  b["user"][:] = _str_keys(cols[cfg.user]) if cfg.user else -1
  if cfg.sample_id:
    b["sample_id"][:] = np.asarray(pc.cast(pc.utf8_trim_whitespace(cols[cfg.sample_id]), pa.int64()))
  else:
    b["sample_id"][:] = np.arange(first_row, first_row + n)
  return b


def _load_stats(stats_from: str, cfg: _Cfg, mappers) -> list[ds_lib.DenseField]:
  """Vocabularies and dense statistics of an earlier ingestion (the train split)."""
  ref = ds_lib.open_dataset(stats_from)
  vpath = os.path.join(stats_from, "vocabs.json")
  vocabs = {}
  if os.path.exists(vpath):
    with open(vpath) as f:
      vocabs = json.load(f)
  for mp_ in mappers:
    if mp_.col.mapping == "vocab":
      if mp_.col.column not in vocabs:
        raise IngestError(f"stats_from={stats_from}: no vocabulary for column {mp_.col.column!r} in {vpath}")
      mp_.vocab = ids_lib.Vocab.from_json(vocabs[mp_.col.column])
  dense = {f.name: f for f in ref.schema.dense}
  missing = [c for c in cfg.dense if c not in dense]
  if missing:
    raise IngestError(f"stats_from={stats_from}: has no dense field(s) {missing}")
  return [dense[c] for c in cfg.dense]


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags

  F = flags.FLAGS
  if F.config is None:
    print("error: --config is required (e.g. configs/data/rechub_aliccp.py)", file=sys.stderr)
    sys.exit(1)
  try:
    ingest(F.config, F.input or [], F.out_dir, stats_from=F.stats_from)
  except (IngestError, ds_lib.DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "a configs/data/*.py ingestion config")
  flags.DEFINE_list("input", None, "input CSV/Parquet file(s), comma-separated")
  flags.DEFINE_string("out_dir", None, "output dataset directory")
  flags.DEFINE_string("stats_from", None, "reuse vocabularies and dense statistics of this dataset (the train split)")
  app.run(main)
