r"""Ali-CCP raw dump -> an esmjax blocked dataset: each file read once, bounded memory, all cores.

    python -m esmjax.data.aliccp \
        --skeleton=sample_skeleton_train.csv --common_features=common_features_train.csv \
        --out_dir=data/aliccp_train [--bad_lines=skip|fail] [--block_rows=0 (auto)] [--workers=2] \
        [--config=configs/data/aliccp_raw.py] [--stats_from=data/aliccp_train] [--range_mb=64]

(`--range_mb` caps the byte range per task and shard; smaller files are cut into 16 ranges of at
least 4 MB each, so both workers stay busy.)

Input (DESIGN.md §3): skeleton rows `sample_id,click,buy,common_feature_index,feature_num,
feature_list`, common rows `common_feature_index,feature_num,feature_list`, a feature list being
`field\x02id\x03value` items joined by `\x01`.

How it runs:
1. The common-features file is cut into byte ranges parsed in parallel into a compact numeric
   table — int64 keys (a 64-bit hash of the `common_feature_index` string) sorted, and per common
   row the mapped single-valued ids, dense values and the padded multi-valued ids + weights. Saved
   as `.npy` in `<out_dir>/_common/` and memory-mapped by the workers (one copy in the page cache,
   not one per process; no Python string per row anywhere).
2. The skeleton is cut into byte ranges aligned to line starts; each range is converted by a pool
   worker into its own shard (`dataset.ShardWriter`: `.tmp` then rename) followed by a sidecar
   `shard-NNNNN.done.json` (written atomically after the rename) with its counts and statistics.
3. `manifest.json` is written last. A directory without it is not a dataset.

Resume: a rerun with the same inputs (path, size, mtime), config, block rows and range size skips
every range whose sidecar exists and reuses the common table (deleted once the manifest is
written). A rerun with anything different first deletes what this converter wrote in `out_dir`
(shards, sidecars, `.tmp` files, the common table, the manifest) and starts over: never a mix of two
configurations. Workers die with the converter (Linux PR_SET_PDEATHSIG) and an flock keeps a second
conversion out of the same directory.

Ids: every field is hashed (`ids.hash_ids`: splitmix64 of the integer id salted per field) into
its configured bucket count, shifted to [2, buckets + 2): PAD = 0 is an absent field or an empty
slot, OOV = 1 is never produced. Hashing needs no vocabulary pass and no state shared between
workers or between the train and the test conversion, which is what keeps this single-pass,
parallel and bounded in memory.

Fields (defaults in `default_config`, overridable by `--config`): single-valued fields become
`sparse` columns; multi-valued ones (behaviour lists 109_14/110_14/127_14/150_14, item intention
210, and 853 = 150_14 × 210, which repeats within a row) keep every value as ids + their float
values as weights, in file order; a list longer than `max_len` keeps its `max_len` largest
weights (ties: first seen), and the dropped values are counted in the manifest. The combination fields 508/509/702 carry values: the id is a
sparse column and the value is also a dense feature `<field>_value` (0 where absent). `user` is the
raw id of field 101 (-1 where absent), `sample_id` the skeleton's first column.

Bad lines (counted per kind, first examples with file and line number in the manifest and on the
console; `--bad_lines=fail` stops at the first, in file order): see `BAD_KINDS`. Rows are only
ever dropped for one of those reasons.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import re
import sys
import time
from typing import Any, Iterator, Sequence

import numpy as np

from esmjax.data import dataset as ds_lib
from esmjax.data import ids as ids_lib

BAD_KINDS = {
    "empty_file": "the file has no data lines",
    "column_count": "wrong number of comma-separated columns",
    "bad_label": "click or buy is not 0 or 1",
    "buy_without_click": "click=0 with buy=1",
    "bad_sample_id": "sample_id is not a non-negative integer",
    "bad_feature_item": "a feature item is not field\\x02id\\x03value (missing separator or empty/non-numeric part)",
    "unknown_common_feature_index": "common_feature_index not found in the common-features file",
    "duplicate_common_feature_index": "common_feature_index already defined earlier in the common-features file",
}
WARN_KINDS = {  # the row is kept
    "feature_num_mismatch": "feature_num differs from the number of items in feature_list",
    "duplicate_single_value": "a single-valued field occurs twice in a row (first value kept)",
}
BAD_LINES_MODES = ("skip", "fail")
FIELD_KINDS = ("sparse", "multi")
MAX_EXAMPLES = 5
_SKELETON_COLS, _COMMON_COLS = 6, 3
_KIND_CODES = {k: i + 1 for i, k in enumerate(BAD_KINDS)}
_CODE_KINDS = {v: k for k, v in _KIND_CODES.items()}


class ConversionError(RuntimeError):
  """Stops a conversion; the message names the file and line, or the config key."""


# ---------------------------------------------------------------------------------------------
# Configuration.

_HUGE = 1 << 20
# name: (kind, buckets, max_len, group, value_as_dense)
_DEFAULT_FIELDS = {
    "101": ("sparse", _HUGE, 1, "user", False),
    "121": ("sparse", 4096, 1, "user", False),
    "122": ("sparse", 1024, 1, "user", False),
    "124": ("sparse", 1024, 1, "user", False),
    "125": ("sparse", 1024, 1, "user", False),
    "126": ("sparse", 1024, 1, "user", False),
    "127": ("sparse", 1024, 1, "user", False),
    "128": ("sparse", 1024, 1, "user", False),
    "129": ("sparse", 1024, 1, "user", False),
    "109_14": ("multi", _HUGE, 16, "user", False),
    "110_14": ("multi", _HUGE, 16, "user", False),
    "127_14": ("multi", _HUGE, 16, "user", False),
    "150_14": ("multi", _HUGE, 16, "user", False),
    "205": ("sparse", _HUGE, 1, "item", False),
    "206": ("sparse", _HUGE, 1, "item", False),
    "207": ("sparse", _HUGE, 1, "item", False),
    "210": ("multi", _HUGE, 8, "item", False),
    "216": ("sparse", _HUGE, 1, "item", False),
    "508": ("sparse", _HUGE, 1, "combo", True),
    "509": ("sparse", _HUGE, 1, "combo", True),
    "702": ("sparse", _HUGE, 1, "combo", True),
    "853": ("multi", _HUGE, 4, "combo", False),
    "301": ("sparse", 1024, 1, "context", False),
}


def row_bytes(schema: ds_lib.Schema) -> int:
  """Bytes of one row in a block."""
  b = ds_lib.empty_block(schema, 1)
  return int(sum(v.nbytes for v in b.values()))


def auto_block_rows(schema: ds_lib.Schema, target_bytes: int = 1 << 20) -> int:
  """A power of two giving ~1 MB blocks: grain reads a record through a 32 KB buffer without
  readahead, so multi-MB records decode slower per row; much smaller ones pay the per-record cost."""
  n = target_bytes / max(row_bytes(schema), 1)
  return int(min(16384, max(256, 2 ** round(np.log2(n)))))


def default_config():
  """The Ali-CCP field layout as an ml_collections ConfigDict (what configs/data/aliccp_raw.py returns)."""
  import ml_collections

  c = ml_collections.ConfigDict()
  c.fields = {n: dict(kind=k, buckets=b, max_len=m, group=g, value_dense=v, pooling="sum")
              for n, (k, b, m, g, v) in _DEFAULT_FIELDS.items()}
  c.user_field = "101"
  c.dense_buckets = 16  # quantile buckets for DenseField.boundaries
  return c


@dataclasses.dataclass(frozen=True)
class _Spec:
  """The config compiled to arrays indexed by field number (what the vectorised code needs)."""

  names: tuple[str, ...]
  kinds: tuple[str, ...]
  buckets: np.ndarray  # uint64 [Fall]
  salts: np.ndarray  # uint64 [Fall]
  is_multi: np.ndarray  # bool [Fall]
  col: np.ndarray  # int64 [Fall]: sparse column or multi index
  dense_col: np.ndarray  # int64 [Fall], -1 if none
  max_len: np.ndarray  # int64 [M]
  mv_off: np.ndarray  # int64 [M]
  user_field: int  # field number, -1 if none
  codes: np.ndarray  # sorted uint64 packed names
  code_field: np.ndarray  # field number for each sorted code
  schema: ds_lib.Schema
  dense_buckets: int
  config_json: str

  @property
  def n_sparse(self):
    return len(self.schema.sparse)

  @property
  def n_multi(self):
    return len(self.schema.multi)


def _pack_name(name: bytes) -> np.uint64:
  return np.frombuffer(name.ljust(8, b"\0"), np.uint64)[0]


def compile_config(config) -> _Spec:
  """Validates a config (ConfigDict or dict) and compiles it; errors name the key."""
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  fields = cfg.get("fields")
  if not fields:
    raise ConversionError("config.fields is empty: nothing to convert")
  names, kinds, buckets, salts, cols, dcols, max_lens = [], [], [], [], [], [], []
  sparse, multi, dense = [], [], []
  for name, f in fields.items():
    key = f"config.fields[{name!r}]"
    unknown = set(f) - {"kind", "buckets", "max_len", "group", "value_dense", "pooling"}
    if unknown:
      raise ConversionError(f"{key}: unknown key(s) {sorted(unknown)}; allowed: kind, buckets, max_len, group, value_dense, pooling")
    if len(name.encode()) > 8:
      raise ConversionError(f"{key}: field names longer than 8 bytes are not supported")
    kind = f.get("kind", "sparse")
    if kind not in FIELD_KINDS:
      raise ConversionError(f"{key}.kind={kind!r}; allowed: {list(FIELD_KINDS)}")
    b = int(f.get("buckets", _HUGE))
    if not 1 <= b < 2**31 - 2:
      raise ConversionError(f"{key}.buckets={b}; allowed: 1 .. 2**31-3")
    group = f.get("group", "user")
    names.append(name)
    kinds.append(kind)
    buckets.append(b)
    salts.append(ids_lib.field_salt(name))
    if kind == "sparse":
      cols.append(len(sparse))
      sparse.append(ds_lib.SparseField(name, b + ids_lib.NUM_RESERVED, group))
      max_lens.append(None)
    else:
      ml = int(f.get("max_len", 1))
      if ml < 1:
        raise ConversionError(f"{key}.max_len={ml}; must be >= 1")
      pooling = f.get("pooling", "sum")
      if pooling not in ("sum", "mean"):
        raise ConversionError(f"{key}.pooling={pooling!r}; allowed: ['sum', 'mean']")
      cols.append(len(multi))
      multi.append(ds_lib.MultiField(name, b + ids_lib.NUM_RESERVED, ml, pooling, group))
    if f.get("value_dense", False):
      dcols.append(len(dense))
      dense.append(ds_lib.DenseField(f"{name}_value"))
    else:
      dcols.append(-1)
  user_field = cfg.get("user_field", "101")
  if user_field and user_field not in names:
    raise ConversionError(f"config.user_field={user_field!r} is not one of config.fields {names}")
  dense_buckets = int(cfg.get("dense_buckets", 16))
  if dense_buckets < 1:
    raise ConversionError(f"config.dense_buckets={dense_buckets}; must be >= 1")
  unknown = set(cfg) - {"fields", "user_field", "dense_buckets"}
  if unknown:
    raise ConversionError(f"config has unknown key(s) {sorted(unknown)}; allowed: fields, user_field, dense_buckets")
  packed = np.array([_pack_name(n.encode()) for n in names], np.uint64)
  order = np.argsort(packed)
  schema = ds_lib.Schema(sparse=tuple(sparse), multi=tuple(multi), dense=tuple(dense), labels=("click", "buy"))
  return _Spec(
      names=tuple(names), kinds=tuple(kinds), buckets=np.array(buckets, np.uint64),
      salts=np.array(salts, np.uint64), is_multi=np.array([k == "multi" for k in kinds], bool), col=np.array(cols, np.int64), dense_col=np.array(dcols, np.int64),
      max_len=np.array([f.max_len for f in multi], np.int64), mv_off=np.array(schema.mv_offsets, np.int64),
      user_field=names.index(user_field) if user_field else -1, codes=packed[order],
      code_field=order.astype(np.int64), schema=schema, dense_buckets=dense_buckets,
      config_json=json.dumps(cfg, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# Vectorised parsing of a chunk of complete lines.


_TAIL = 64  # zero bytes after every parsed buffer: tokens up to this wide are sliced without bounds checks


def _gather(a: np.ndarray, s: np.ndarray, length: np.ndarray, w: int) -> np.ndarray:
  """Left-aligned, zero-padded token bytes [n, w] (`a` ends with _TAIL zero bytes)."""
  if w <= _TAIL:  # rows of a sliding-window view: a memcpy per token instead of a gather per byte
    m = np.lib.stride_tricks.sliding_window_view(a, w)[s]
  else:
    m = a[np.minimum(s[:, None] + np.arange(w), len(a) - 1)]
  m *= np.arange(w) < length[:, None]
  return m


def _parse_uint(a, s, e, maxw: int = 18):
  """Decimal digit tokens a[s:e] -> (int64 values, ok)."""
  n = len(s)
  length = e - s
  ok = (length > 0) & (length <= maxw)
  if n == 0:
    return np.zeros(0, np.int64), ok
  w = int(min(max(int(length.max()), 1), maxw))
  m = _gather(a, s, np.minimum(length, w), w)
  val = np.zeros(n, np.int64)
  for j in range(w):
    act = j < length
    d = m[:, j].astype(np.int64) - 48
    ok &= ~act | ((d >= 0) & (d <= 9))
    val = np.where(act, val * 10 + d, val)
  return val, ok



_FLOAT_RE = re.compile(rb"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _parse_float(a, s, e):
  """Decimal tokens -> (float64, ok). Ali-CCP values repeat a lot ("1.0", log-counts), so tokens of
  up to 8 bytes are packed into one uint64 each and only the distinct ones are parsed."""
  n = len(s)
  length = e - s
  val, ok = np.zeros(n, np.float64), np.zeros(n, bool)
  short = (length >= 1) & (length <= 8)
  idx = np.flatnonzero(short)
  if len(idx):
    codes = _gather(a, s[idx], length[idx], 8).view(np.uint64).reshape(-1)
    uniq = np.unique(codes)  # sort-based; searchsorted for the inverse is much cheaper than return_inverse
    inv = np.searchsorted(uniq, codes)
    uv, uok = np.zeros(len(uniq)), np.zeros(len(uniq), bool)
    for i, u in enumerate(uniq.tobytes()[k:k + 8].rstrip(b"\0") for k in range(0, 8 * len(uniq), 8)):
      if _FLOAT_RE.fullmatch(u):
        uv[i], uok[i] = float(u), True
    val[idx], ok[idx] = uv[inv], uok[inv]
  for i in np.flatnonzero(~short & (length > 8)):  # rare: long spellings
    t = bytes(a[s[i]:e[i]])
    if _FLOAT_RE.fullmatch(t):
      val[i], ok[i] = float(t), True
  ok &= np.isfinite(val)
  return val, ok


def _lookup_fields(a, s, e, spec: _Spec) -> np.ndarray:
  """Field-name tokens -> field number, -1 for names not in the config."""
  length = e - s
  m = _gather(a, s, np.minimum(length, 8), 8)
  codes = np.ascontiguousarray(m).view(np.uint64).reshape(-1)
  pos = np.minimum(np.searchsorted(spec.codes, codes), len(spec.codes) - 1)
  hit = (spec.codes[pos] == codes) & (length <= 8)
  return np.where(hit, spec.code_field[pos], -1)


@dataclasses.dataclass
class _Parsed:
  n_lines: int
  line: np.ndarray  # [n] chunk-local line index of each good row
  cols: list  # per header column: (start, end) arrays for good rows
  item_row: np.ndarray  # [k] row index into the good rows
  item_field: np.ndarray  # [k] field number, -1 unknown
  item_key: np.ndarray  # [k] int64 raw id
  item_val: np.ndarray  # [k] float32 value
  reason: np.ndarray  # [n_lines] 0 good, -1 blank, else _KIND_CODES
  warn_mismatch: np.ndarray  # [n] feature_num mismatch per good row
  unknown_fields: collections.Counter
  a: np.ndarray
  starts: np.ndarray
  ends: np.ndarray


def _parse_chunk(buf: bytes, n_cols: int, spec: _Spec, skeleton: bool) -> _Parsed:
  """Parses complete lines (buf ends with b'\\n'): shapes, labels and feature items, all vectorised.

  One scan finds every separator (`,` `\\x01` `\\x02` `\\x03` `\\n`); a good line is n_cols-1 commas
  then the items' separators in the exact pattern \\x02 \\x03 (\\x01 \\x02 \\x03)*, so items are
  read straight off the separator array without searching.
  """
  a = np.frombuffer(buf + bytes(_TAIL), np.uint8)
  body = a[:len(buf)]
  sep = np.flatnonzero((body <= 3) | (body == 44) | (body == 10))
  code = body[sep]
  is_nl = code == 10
  nl_idx = np.flatnonzero(is_nl)
  n_lines = len(nl_idx)
  ends = sep[nl_idx]
  starts = np.empty_like(ends)
  starts[:1] = 0
  starts[1:] = ends[:-1] + 1
  cr = (ends > starts) & (a[np.maximum(ends - 1, 0)] == 13)
  ends[cr] -= 1
  first = np.empty_like(nl_idx)
  first[:1] = 0
  first[1:] = nl_idx[:-1] + 1
  reason = np.zeros(n_lines, np.int64)
  reason[ends == starts] = -1  # blank lines are ignored

  def flag(mask, kind):
    reason[(reason == 0) & mask] = _KIND_CODES[kind]

  ccum = np.zeros(len(code) + 1, np.int64)
  np.cumsum(code == 44, out=ccum[1:])
  flag(ccum[nl_idx] - ccum[first] != n_cols - 1, "column_count")
  rs = first + n_cols - 1  # separator index where the feature list's separators begin
  flag(ccum[np.minimum(rs, len(code))] - ccum[first] != n_cols - 1, "bad_feature_item")  # \x01-3 in the header
  shape_ok = reason == 0
  sl = np.flatnonzero(shape_ok)
  commas = sep[first[sl, None] + np.arange(n_cols - 1)]
  col_s = np.concatenate([starts[sl, None], commas + 1], axis=1)
  col_e = np.concatenate([commas, ends[sl, None]], axis=1)

  if skeleton:
    ch = a[col_s[:, 1:3]]
    ln = col_e[:, 1:3] - col_s[:, 1:3]
    m = np.zeros(n_lines, bool)
    m[sl] = ((ln != 1) | ((ch != 48) & (ch != 49))).any(1)
    flag(m, "bad_label")
    m[:] = False
    m[sl] = (ch[:, 1] == 49) & (ch[:, 0] != 49)
    flag(m, "buy_without_click")
    _, sid_ok = _parse_uint(a, col_s[:, 0], col_e[:, 0])
    m[:] = False
    m[sl] = ~sid_ok
    flag(m, "bad_sample_id")

  # Feature items: check the separator pattern of the feature list of every line.
  nfs = nl_idx - rs  # separators in the feature list
  fl_s = np.full(n_lines, -1, np.int64)
  fl_s[sl] = col_s[:, -1]
  text = ends > fl_s
  flag(shape_ok & (((nfs == 0) & text) | ((nfs > 0) & (nfs % 3 != 2))), "bad_feature_item")
  line_of = np.cumsum(is_nl) - is_nl
  r = np.arange(len(code)) - rs[np.minimum(line_of, max(n_lines - 1, 0))] if n_lines else np.zeros(0, np.int64)
  in_fl = ~is_nl & (r >= 0) & shape_ok[np.minimum(line_of, max(n_lines - 1, 0))] if n_lines else np.zeros(0, bool)
  expect = np.array([2, 3, 1], np.uint8)[r % 3]
  m = np.zeros(n_lines, bool)
  m[line_of[in_fl & (code != expect)]] = True
  flag(m, "bad_feature_item")
  k2 = np.flatnonzero(in_fl & (r % 3 == 0) & (reason == 0)[np.minimum(line_of, max(n_lines - 1, 0))])
  it_l = line_of[k2]
  p2, p3 = sep[k2], sep[k2 + 1]
  it_e = np.where(code[k2 + 2] == 10, ends[it_l], sep[k2 + 2])
  it_s = np.where(r[k2] == 0, fl_s[it_l], sep[np.maximum(k2 - 1, 0)] + 1)
  it_ok = (p2 > it_s) & (p3 > p2 + 1) & (it_e > p3 + 1)
  key, key_ok = _parse_uint(a, p2 + 1, p3)
  nonnum = it_ok & ~key_ok  # non-numeric ids (not in Ali-CCP, tolerated): 64-bit hash of the bytes
  if nonnum.any():
    idx = np.flatnonzero(nonnum)
    ln = p3[idx] - p2[idx] - 1
    key[idx] = ids_lib.bytes_keys(_gather(a, p2[idx] + 1, ln, int(ln.max())), ln)
  val, val_ok = _parse_float(a, p3 + 1, it_e)
  it_ok &= val_ok
  m = np.zeros(n_lines, bool)
  m[it_l[~it_ok]] = True
  flag(m, "bad_feature_item")

  # feature_num (second-to-last header column) against the items actually there.
  good = reason == 0
  rows = np.flatnonzero(good)
  row_of_line = np.full(n_lines, -1, np.int64)
  row_of_line[rows] = np.arange(len(rows))
  sel = np.flatnonzero(good[sl])  # positions in sl/col_* of good rows
  fnum, fnum_ok = _parse_uint(a, col_s[sel, -2], col_e[sel, -2])
  counts = np.where(nfs[rows] > 0, (nfs[rows] + 1) // 3, 0)
  mismatch = ~fnum_ok | (fnum != counts)

  ik = good[it_l]
  fld = _lookup_fields(a, it_s[ik], p2[ik], spec)
  unknown = collections.Counter()
  if (fld < 0).any():
    for i in np.flatnonzero(fld < 0)[:10000]:
      unknown[bytes(a[it_s[ik][i]:p2[ik][i]]).decode("utf-8", "replace")] += 1
  return _Parsed(
      n_lines=n_lines, line=rows, cols=[(col_s[sel, j], col_e[sel, j]) for j in range(n_cols)],
      item_row=row_of_line[it_l[ik]], item_field=fld, item_key=key[ik],
      item_val=val[ik].astype(np.float32), reason=reason, warn_mismatch=mismatch,
      unknown_fields=unknown, a=a, starts=starts, ends=ends)


def _line_text(p: _Parsed, i: int) -> str:
  raw = bytes(p.a[p.starts[i]:min(p.ends[i], p.starts[i] + 160)])
  return raw.decode("utf-8", "replace").replace("\x01", "^A").replace("\x02", "^B").replace("\x03", "^C")


def _keys_of(a, s, e) -> np.ndarray:
  """common_feature_index strings -> int64 keys (64-bit hash of the bytes, any spelling)."""
  ln = e - s
  if not len(s):
    return np.zeros(0, np.int64)
  return ids_lib.bytes_keys(_gather(a, s, ln, max(int(ln.max()), 1)), ln)


# ---------------------------------------------------------------------------------------------
# Rows: mapping ids and placing items into the block's columns.


@dataclasses.dataclass
class _Rows:
  sparse: np.ndarray
  dense: np.ndarray
  mv_ids: np.ndarray
  mv_w: np.ndarray
  mv_len: np.ndarray  # int16 [n, M]
  trunc: np.ndarray  # int32 [n, M] values dropped by max_len
  user: np.ndarray
  dup_single: np.ndarray  # int64 [n] duplicate single values per row


def _empty_rows(spec: _Spec, n: int) -> _Rows:
  lsum = int(spec.schema.mv_total_len)
  return _Rows(np.zeros((n, spec.n_sparse), np.int32), np.zeros((n, len(spec.schema.dense)), np.float32),
               np.zeros((n, lsum), np.int32), np.zeros((n, lsum), np.float32),
               np.zeros((n, spec.n_multi), np.int16), np.zeros((n, spec.n_multi), np.int32),
               np.full(n, -1, np.int64), np.zeros(n, np.int64))


def _place_items(r: _Rows, spec: _Spec, row, field, key, val) -> None:
  """Maps the items' ids and writes them into `r` (in place) on top of what is there."""
  known = field >= 0
  row, field, key, val = row[known], field[known], key[known], val[known]
  hashed = (ids_lib.splitmix64(key.view(np.uint64) ^ spec.salts[field]) % spec.buckets[field]).astype(np.int32) + 2
  is_multi = spec.is_multi[field]
  n = len(r.user)

  # Single-valued: the first occurrence in the row wins; later ones are counted.
  si = np.flatnonzero(~is_multi)
  if len(si):
    nf = spec.n_sparse
    flat = row[si] * nf + spec.col[field[si]]
    cnt = np.bincount(flat, minlength=n * nf)
    if cnt.max(initial=0) > 1:  # rare: keep the first of each (row, field)
      order = np.argsort(flat, kind="stable")
      fs = flat[order]
      head = np.ones(len(fs), bool)
      head[1:] = fs[1:] != fs[:-1]
      si = si[np.sort(order[head])]
      r.dup_single += np.maximum(cnt - 1, 0).reshape(n, nf).sum(1)
    rr, cc = row[si], spec.col[field[si]]
    already = r.sparse[rr, cc] != 0
    if already.any():
      r.dup_single += np.bincount(rr[already], minlength=n)
    r.sparse[rr, cc] = hashed[si]
    dc = spec.dense_col[field[si]]
    hd = dc >= 0
    r.dense[rr[hd], dc[hd]] = val[si][hd]
    if spec.user_field >= 0:
      hu = field[si] == spec.user_field
      r.user[rr[hu]] = key[si][hu]

  # Multi-valued: file order per (row, field) up to max_len; where a list is longer, the largest
  # weights are kept (ties in file order).
  mi = np.flatnonzero(is_multi)
  if len(mi):
    nm = spec.n_multi
    g = row[mi] * nm + spec.col[field[mi]]
    order = np.argsort(g, kind="stable")
    mi, g = mi[order], g[order]
    head = np.ones(len(g), bool)
    head[1:] = g[1:] != g[:-1]
    ar = np.arange(len(g))
    rank = ar - np.maximum.accumulate(np.where(head, ar, 0))
    mcol = g % nm
    slot = r.mv_len.reshape(-1)[g].astype(np.int64) + rank
    cap = spec.max_len[mcol]
    over = slot >= cap
    if over.any():
      in_over = np.isin(g, np.unique(g[over]))
      sub = np.flatnonzero(in_over)
      o2 = np.lexsort((-val[mi[sub]], g[sub]))  # stable: ties stay in file order
      mi[sub] = mi[sub][o2]
      over = slot >= cap  # same groups, same slots: only which item sits in which slot changed
    fits = ~over
    r.trunc += np.bincount(g[over], minlength=n * nm).reshape(n, nm).astype(r.trunc.dtype)
    rows_f = g[fits] // nm
    pos = spec.mv_off[mcol[fits]] + slot[fits]
    r.mv_ids[rows_f, pos] = hashed[mi[fits]]
    r.mv_w[rows_f, pos] = val[mi[fits]]
    r.mv_len += np.bincount(g[fits], minlength=n * nm).reshape(n, nm).astype(r.mv_len.dtype)


# ---------------------------------------------------------------------------------------------
# Reading byte ranges.


def _ranges(path: str, range_bytes: int) -> list[tuple[int, int]]:
  """Byte ranges of at most range_bytes, and at least 16 of them down to 4 MB each, so that small
  files still keep every worker busy. Depends on the file size only: a rerun finds the same ranges."""
  size = os.path.getsize(path)
  if size == 0:
    return [(0, 0)]
  step = int(min(range_bytes, max(size // 16 + 1, min(range_bytes, 4 << 20))))
  return [(s, min(s + step, size)) for s in range(0, size, step)]


def _iter_chunks(path: str, start: int, end: int, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
  """Complete lines whose first byte lies in [start, end), as (buffer ending in b'\\n', bytes read)."""
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


# ---------------------------------------------------------------------------------------------
# Bookkeeping of bad lines, shared by both passes.


class _Report:
  """Counts and first examples per kind; line numbers are local to a range until `absolute`."""

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()
    self.examples: list[list] = []  # [line, kind, text]

  def add(self, kind: str, line: int, text: str) -> None:
    self.counts[kind] += 1
    if sum(1 for e in self.examples if e[1] == kind) < MAX_EXAMPLES:
      self.examples.append([int(line), kind, text])

  def add_parsed(self, p: _Parsed, line0: int) -> tuple[int, str, str] | None:
    """Records the chunk's bad lines; returns the first (line, kind, text)."""
    bad = np.flatnonzero(p.reason > 0)
    first = None
    for kind_code, cnt in zip(*np.unique(p.reason[bad], return_counts=True)):
      kind = _CODE_KINDS[int(kind_code)]
      self.counts[kind] += int(cnt)
      have = sum(1 for e in self.examples if e[1] == kind)
      for i in bad[p.reason[bad] == kind_code][:max(0, MAX_EXAMPLES - have)]:
        self.examples.append([line0 + int(i), kind, _line_text(p, int(i))])
    if len(bad):
      i = int(bad[0])
      first = (line0 + i, _CODE_KINDS[int(p.reason[i])], _line_text(p, i))
    return first

  def to_json(self) -> dict:
    return {"counts": dict(self.counts), "examples": sorted(self.examples)}


def _merge_reports(parts: Sequence[tuple[int, dict]]) -> dict:
  """Range reports (with their first absolute line number) -> one report with absolute lines."""
  counts: collections.Counter = collections.Counter()
  examples = []
  for line0, rep in parts:
    counts.update(rep.get("counts", {}))
    examples += [[line0 + l, k, t] for l, k, t in rep.get("examples", [])]
  examples.sort()
  per: collections.Counter = collections.Counter()
  kept = []
  for e in examples:
    if per[e[1]] < MAX_EXAMPLES:
      per[e[1]] += 1
      kept.append(e)
  return {"counts": dict(counts), "examples": kept}


# ---------------------------------------------------------------------------------------------
# Worker tasks (module level: picklable for the process pool).

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


def _init_worker(spec_json, progress_bytes, progress_rows, common_dir, in_pool=False):
  if in_pool:
    _die_with_parent()
  _W.clear()
  _W.update(spec=compile_config(json.loads(spec_json)), pbytes=progress_bytes, prows=progress_rows,
            common_dir=common_dir, common=None)


def _progress(nbytes: int, nrows: int) -> None:
  for key, v in (("pbytes", nbytes), ("prows", nrows)):
    c = _W.get(key)
    if c is not None:
      with c.get_lock():
        c.value += v


def _common_task(task: dict) -> dict:
  """One byte range of the common-features file -> its rows of the (unsorted) common table."""
  spec = _W["spec"]
  rep, warn, n_lines, parts = _Report(), _Report(), 0, []
  for buf, nbytes in _iter_chunks(task["path"], task["start"], task["end"], task["chunk_bytes"]):
    p = _parse_chunk(buf, _COMMON_COLS, spec, skeleton=False)
    first = rep.add_parsed(p, n_lines)
    if first and task["fail"]:
      return {"index": task["index"], "error": first, "n_lines": n_lines + p.n_lines}
    n = len(p.line)
    r = _empty_rows(spec, n)
    _place_items(r, spec, p.item_row, p.item_field, p.item_key, p.item_val)
    parts.append(dict(keys=_keys_of(p.a, *p.cols[0]), lines=p.line + n_lines, rows=r))
    _warn_rows(warn, "feature_num_mismatch", p, np.flatnonzero(p.warn_mismatch), n_lines)
    _progress(nbytes, n)
    n_lines += p.n_lines
  out = {"index": task["index"], "n_lines": n_lines, "report": rep.to_json(), "warnings": warn.to_json()}
  if parts:
    out.update({k: np.concatenate([getattr(x["rows"], k) for x in parts]) for k in
                ("sparse", "dense", "mv_ids", "mv_w", "mv_len", "trunc", "user", "dup_single")})
    out["keys"] = np.concatenate([x["keys"] for x in parts])
    out["lines"] = np.concatenate([x["lines"] for x in parts])
  return out


def _warn_rows(warn: _Report, kind: str, p: _Parsed, rows: np.ndarray, line0: int) -> None:
  """Counts rows (indices into p.line) under a warning kind, with the first few as examples."""
  for i in rows[:MAX_EXAMPLES]:
    li = int(p.line[i])
    warn.add(kind, line0 + li, _line_text(p, li))
  if len(rows) > MAX_EXAMPLES:
    warn.counts[kind] += len(rows) - MAX_EXAMPLES


def _load_common(directory: str) -> dict[str, np.ndarray]:
  return {k: np.load(os.path.join(directory, f"{k}.npy"), mmap_mode="r")
          for k in ("keys", "sparse", "dense", "mv_ids", "mv_w", "mv_len", "trunc", "user", "dup_single")}


class _DenseStats:
  """Count, mean and M2 (merged chunk by chunk) and a bounded, seeded sample per dense column (for quantiles)."""

  def __init__(self, d: int, seed: int, sample: int = 2048):
    self.n, self.mean, self.m2 = 0, np.zeros(d), np.zeros(d)
    self.cap, self.rng, self.sample = sample, np.random.default_rng(seed), np.zeros((0, d), np.float32)

  def add(self, x: np.ndarray) -> None:
    if not x.shape[1] or not len(x):
      return
    self.n, self.mean, self.m2 = _merge_moments(self.n, self.mean, self.m2, len(x), x.mean(0, dtype=np.float64),
                                                np.square(x - x.mean(0, dtype=np.float64)).sum(0))
    take = x[self.rng.random(len(x)) < min(1.0, 4 * self.cap / max(self.n, 1))]
    self.sample = np.concatenate([self.sample, take])
    if len(self.sample) > self.cap:
      self.sample = self.sample[self.rng.choice(len(self.sample), self.cap, replace=False)]

  def to_json(self) -> dict:
    return {"n": self.n, "mean": self.mean.tolist(), "m2": self.m2.tolist(), "sample": self.sample.T.tolist()}


def _merge_moments(na, ma, m2a, nb, mb, m2b):
  """Chan et al.'s pairwise merge of (count, mean, M2): no cancellation on constant columns."""
  n = na + nb
  if n == 0:
    return n, ma, m2a
  delta = np.asarray(mb) - np.asarray(ma)
  return n, ma + delta * nb / n, np.asarray(m2a) + np.asarray(m2b) + delta * delta * na * nb / n


def _skeleton_task(task: dict) -> dict:
  """One byte range of the skeleton -> one shard + its sidecar. Returns the sidecar's content."""
  spec: _Spec = _W["spec"]
  if _W["common"] is None:
    _W["common"] = _load_common(_W["common_dir"])
  C = _W["common"]
  t0 = time.time()
  rep, warn = _Report(), _Report()
  dstats = _DenseStats(len(spec.schema.dense), seed=task["index"])
  trunc_vals = np.zeros(spec.n_multi, np.int64)
  trunc_rows = np.zeros(spec.n_multi, np.int64)
  unknown: collections.Counter = collections.Counter()
  clicks = buys = 0
  n_lines = 0
  writer = ds_lib.ShardWriter(task["out_dir"], task["shard"])
  pending: list[dict] = []
  pending_n = 0
  block_rows = task["block_rows"]

  def flush(final: bool):
    nonlocal pending, pending_n
    if not pending:
      return
    big = ds_lib.concat_blocks(pending) if len(pending) > 1 else pending[0]
    start = 0
    while pending_n - start >= block_rows or (final and start < pending_n):
      writer.write(ds_lib.slice_block(big, slice(start, start + block_rows)))
      start += block_rows
    rest = ds_lib.slice_block(big, slice(start, None))
    pending, pending_n = ([rest], pending_n - start) if pending_n > start else ([], 0)

  try:
    for buf, nbytes in _iter_chunks(task["path"], task["start"], task["end"], task["chunk_bytes"]):
      p = _parse_chunk(buf, _SKELETON_COLS, spec, skeleton=True)
      # Join: common_feature_index -> row of the common table.
      keys = _keys_of(p.a, *p.cols[3])
      nk = len(C["keys"])
      pos = np.minimum(np.searchsorted(C["keys"], keys), max(nk - 1, 0))
      found = (C["keys"][pos] == keys) if nk else np.zeros(len(keys), bool)
      if not found.all():
        p.reason[p.line[~found]] = _KIND_CODES["unknown_common_feature_index"]
      first = rep.add_parsed(p, n_lines)
      if first and task["fail"]:
        _abort(writer)
        return {"index": task["index"], "error": first, "n_lines": n_lines + p.n_lines}
      unknown.update(p.unknown_fields)
      _warn_rows(warn, "feature_num_mismatch", p, np.flatnonzero(p.warn_mismatch & found), n_lines)
      # Keep the found rows; renumber the items' rows.
      keep_rows = np.flatnonzero(found)
      newidx = np.full(len(found), -1, np.int64)
      newidx[keep_rows] = np.arange(len(keep_rows))
      ik = found[p.item_row] if len(p.item_row) else np.zeros(0, bool)
      cidx = pos[keep_rows]
      n = len(keep_rows)
      r = _Rows(*(np.asarray(C[k][cidx]) for k in ("sparse", "dense", "mv_ids", "mv_w", "mv_len", "trunc", "user")),
                dup_single=np.zeros(n, np.int64))
      r.trunc = r.trunc.astype(np.int32, copy=True)
      _place_items(r, spec, newidx[p.item_row[ik]], p.item_field[ik], p.item_key[ik], p.item_val[ik])
      dup = r.dup_single + np.asarray(C["dup_single"][cidx])
      _warn_rows(warn, "duplicate_single_value", p, keep_rows[np.flatnonzero(dup)], n_lines)
      trunc_vals += r.trunc.sum(0)
      trunc_rows += (r.trunc > 0).sum(0)
      sid, _ = _parse_uint(p.a, p.cols[0][0][keep_rows], p.cols[0][1][keep_rows])
      labels = np.stack([p.a[p.cols[1][0][keep_rows]] == 49, p.a[p.cols[2][0][keep_rows]] == 49], 1).astype(np.uint8)
      clicks += int(labels[:, 0].sum())
      buys += int(labels[:, 1].sum())
      dstats.add(r.dense)
      block = {"sparse": r.sparse, "mv_ids": r.mv_ids, "mv_w": r.mv_w, "dense": r.dense, "labels": labels,
               "user": r.user, "sample_id": sid}
      if n:
        pending.append(block)
        pending_n += n
        if pending_n >= block_rows:
          flush(False)
      _progress(nbytes, n)
      n_lines += p.n_lines
    flush(True)
    entry = writer.close()
  except BaseException:
    _abort(writer)
    raise
  side = {
      "fingerprint": task["fingerprint"], "index": task["index"], "range": [task["start"], task["end"]],
      "shard": entry, "n_lines": n_lines, "bad": rep.to_json(), "warnings": warn.to_json(),
      "unknown_fields": dict(unknown), "dense": dstats.to_json(),
      "truncated_values": trunc_vals.tolist(), "truncated_rows": trunc_rows.tolist(),
      "clicks": clicks, "buys": buys, "bytes": task["end"] - task["start"], "seconds": time.time() - t0,
  }
  if entry["num_rows"] == 0:
    os.remove(os.path.join(task["out_dir"], task["shard"]))
  _write_json_atomic(os.path.join(task["out_dir"], task["sidecar"]), side)
  return side


def _abort(writer: ds_lib.ShardWriter) -> None:
  """Drops an unfinished shard: only its `.tmp` existed."""
  writer.abort()


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Orchestration.


def _file_id(path: str) -> dict:
  st = os.stat(path)
  return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _fingerprint(*parts: Any) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ours(name: str) -> bool:
  return (name.startswith("shard-") and (name.endswith(ds_lib.SHARD_SUFFIX) or name.endswith(".done.json")
                                         or name.endswith(".tmp"))) or name in (ds_lib.MANIFEST, ds_lib.MANIFEST + ".tmp")


def _clear(out_dir: str) -> None:
  for name in os.listdir(out_dir):
    if _ours(name):
      os.remove(os.path.join(out_dir, name))
  _remove_dir(os.path.join(out_dir, "_common"))


def _run_tasks(fn, tasks, pool, bar, counters, on_result):
  """Runs tasks (in the pool, or here), results in task order, updating the progress bar."""
  def tick():
    if bar is not None:
      bar.update(counters[0].value - bar.n)
      dt = max(time.time() - bar._esm_t0, 1e-9)
      bar.set_postfix_str(f"{counters[1].value / dt:,.0f} rows/s", refresh=False)

  if pool is None:
    for t in tasks:
      res = fn(t)
      tick()
      if on_result(res) is False:
        return
    return
  it = pool.imap(fn, tasks)
  done = 0
  while done < len(tasks):
    try:
      res = it.next(timeout=0.25)
    except mp.TimeoutError:
      tick()
      continue
    done += 1
    tick()
    if on_result(res) is False:
      return


def _console(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _format_bad(file: str, line: int, kind: str, text: str) -> str:
  return f"{file}:{line}: {kind} ({BAD_KINDS.get(kind, WARN_KINDS.get(kind, ''))}): {text!r}"


@dataclasses.dataclass
class _Job:
  """One conversion's settings, resolved and validated."""

  skeleton: str
  common_features: str
  out_dir: str
  spec: _Spec
  bad_lines: str
  block_rows: int
  workers: int
  range_bytes: int
  chunk_bytes: int
  stats_from: str | None
  progress: bool
  keep_common_index: bool
  t_start: float

  @property
  def fail(self) -> bool:
    return self.bad_lines == "fail"

  @property
  def common_dir(self) -> str:
    return os.path.join(self.out_dir, "_common")


def convert(skeleton: str, common_features: str, out_dir: str, *, config=None, bad_lines: str = "skip",
            block_rows: int = 0, workers: int | None = None, range_mb: float = 64.0,
            chunk_mb: float = 8.0, stats_from: str | None = None, progress: bool = True,
            keep_common_index: bool = False) -> dict:
  """Converts raw Ali-CCP files into a dataset directory; returns its manifest (see module doc)."""
  t_start = time.time()
  if bad_lines not in BAD_LINES_MODES:
    raise ConversionError(f"bad_lines={bad_lines!r}; allowed: {list(BAD_LINES_MODES)}")
  if block_rows < 0:
    raise ConversionError(f"block_rows={block_rows}; must be >= 1, or 0 for automatic")
  for flag, path in (("skeleton", skeleton), ("common_features", common_features)):
    if not path:
      raise ConversionError(f"--{flag} is required")
    if not os.path.isfile(path):
      raise ConversionError(f"--{flag}: no such file: {path}")
  if not out_dir:
    raise ConversionError("--out_dir is required")
  if stats_from and not os.path.isdir(stats_from):
    raise ConversionError(f"--stats_from: no such dataset directory: {stats_from}")
  spec = compile_config(config if config is not None else default_config())
  job = _Job(skeleton=skeleton, common_features=common_features, out_dir=out_dir, spec=spec, bad_lines=bad_lines,
             block_rows=block_rows or auto_block_rows(spec.schema),
             workers=max(1, int(workers or os.cpu_count() or 1)),
             range_bytes=max(1 << 12, int(range_mb * (1 << 20))), chunk_bytes=max(1 << 12, int(chunk_mb * (1 << 20))),
             stats_from=stats_from, progress=progress, keep_common_index=keep_common_index, t_start=t_start)
  os.makedirs(out_dir, exist_ok=True)
  lock = _lock(out_dir)
  try:
    return _convert(job)
  finally:
    lock.close()


def _lock(out_dir: str):
  """One conversion per output directory at a time (an exclusive flock, released on exit or crash)."""
  import fcntl

  f = open(os.path.join(out_dir, ".converting.lock"), "w")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.close()
    raise ConversionError(f"another conversion is writing to {out_dir} (it holds {f.name})") from None
  return f


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _convert(job: _Job) -> dict:
  spec, out_dir = job.spec, job.out_dir
  sk_id, cf_id = _file_id(job.skeleton), _file_id(job.common_features)
  fp_common = _fingerprint(cf_id, spec.config_json, job.range_bytes)
  fp = _fingerprint(sk_id, fp_common, job.block_rows)
  # Resume or restart: everything we wrote under another fingerprint goes.
  stale = any(_read_json(os.path.join(out_dir, n)).get("fingerprint") != fp
              for n in os.listdir(out_dir) if n.startswith("shard-") and n.endswith(".done.json"))
  cmeta = _read_json(os.path.join(job.common_dir, "meta.json"))
  stale |= cmeta is not None and cmeta.get("fingerprint") != fp_common
  mpath = os.path.join(out_dir, ds_lib.MANIFEST)
  old = _read_json(mpath)
  stale |= old is not None and old.get("conversion", {}).get("fingerprint") != fp
  if stale:
    _console(f"{out_dir}: holds a conversion with other inputs or settings: restarting from scratch")
    _clear(out_dir)
  elif old is not None:
    os.remove(mpath)  # rewritten at the end; until then the directory is not a dataset

  ctx = mp.get_context("spawn")  # no fork: the caller may hold threads (tqdm, grain, JAX)
  counters = (ctx.Value("q", 0), ctx.Value("q", 0))
  init_args = (spec.config_json, counters[0], counters[1], job.common_dir)
  pool = ctx.Pool(job.workers, initializer=_init_worker, initargs=init_args + (True,)) if job.workers > 1 else None
  if pool is None:
    _init_worker(*init_args)
  try:
    common_meta = _build_common(job, fp_common, pool, counters)
    t_common = time.time() - job.t_start
    sk_meta = _convert_skeleton(job, fp, pool, counters)
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()
    _W.clear()

  schema = dataclasses.replace(spec.schema, dense=tuple(_dense_fields(spec, sk_meta["sidecars"], job.stats_from)))
  shards = [s["shard"] for s in sk_meta["sidecars"] if s["shard"]["num_rows"] > 0]
  n_rows = sum(s["num_rows"] for s in shards)
  seconds = time.time() - job.t_start
  nbytes = sk_id["size"] + cf_id["size"]
  conversion = {
      "fingerprint": fp,
      "id_mapping": {
          "kind": "hash",
          "function": "2 + splitmix64(raw_id XOR blake2b8(field name)) % buckets  (esmjax.data.ids.hash_ids)",
          "why": "single streaming pass, bounded memory, no vocabulary shared between workers or splits",
          "buckets": {n: int(b) for n, b in zip(spec.names, spec.buckets)},
          "pad": ds_lib.PAD, "oov": ds_lib.OOV,
      },
      "user_key": f"raw id of field {spec.names[spec.user_field] if spec.user_field >= 0 else None} (-1 where absent)",
      "dense_from": "values of fields with value_dense (0 where absent)",
      "multi_valued_truncation": "largest weights kept, ties in file order",
      "rows_written": n_rows, "clicks": sk_meta["clicks"], "buys": sk_meta["buys"],
      "lines": {"skeleton": sk_meta["n_lines"], "common_features": common_meta["n_lines"]},
      "common_rows": common_meta["n_rows"],
      "bad_lines": {"mode": job.bad_lines, "skeleton": sk_meta["bad"], "common_features": common_meta["bad"]},
      "warnings": {"skeleton": sk_meta["warnings"], "common_features": common_meta["warnings"]},
      "unknown_fields": sk_meta["unknown_fields"],
      "truncated": {f.name: {"values": int(v), "rows": int(r), "max_len": f.max_len}
                    for f, v, r in zip(spec.schema.multi, sk_meta["truncated_values"], sk_meta["truncated_rows"])},
      "config": json.loads(spec.config_json),
      "input_bytes": nbytes, "seconds": round(seconds, 3), "seconds_common_features": round(t_common, 3),
      "workers": job.workers, "range_bytes": job.range_bytes, "stats_from": job.stats_from,
  }
  source = {"format": "aliccp-raw", "skeleton": sk_id, "common_features": cf_id,
            "made_by": "python -m esmjax.data.aliccp"}
  manifest = ds_lib.write_manifest(out_dir, schema, shards, job.block_rows, source, {"conversion": conversion})
  if not job.keep_common_index:
    _remove_dir(job.common_dir)
  if job.progress:
    _console(f"{out_dir}: {n_rows:,} rows in {len(shards)} shard(s), {seconds:.1f} s "
             f"({nbytes / 1e6 / max(seconds, 1e-9):.1f} MB/s, {n_rows / max(seconds, 1e-9):,.0f} rows/s)")
  return manifest


def _remove_dir(d: str) -> None:
  if os.path.isdir(d):
    for name in os.listdir(d):
      os.remove(os.path.join(d, name))
    os.rmdir(d)


def _report_bad(file: str, bad: dict, progress: bool) -> None:
  if not progress or not bad["counts"]:
    return
  _console(f"{file}: bad lines skipped: " + ", ".join(f"{k}={v:,}" for k, v in sorted(bad["counts"].items())))
  for line, kind, text in bad["examples"]:
    _console("  " + _format_bad(file, line, kind, text))


def _build_common(job: _Job, fp: str, pool, counters) -> dict:
  """The common-features file -> sorted numeric table in job.common_dir (reused when up to date)."""
  path, cdir, spec = job.common_features, job.common_dir, job.spec
  meta_path = os.path.join(cdir, "meta.json")
  meta = _read_json(meta_path)
  if meta is not None and meta.get("fingerprint") == fp:
    if job.fail and meta["bad"]["counts"]:
      l, kind, text = min(meta["bad"]["examples"])
      raise ConversionError("--bad_lines=fail: " + _format_bad(path, l, kind, text))
    if job.progress:
      _console(f"{path}: reusing the common-feature index in {cdir}")
    return meta
  os.makedirs(cdir, exist_ok=True)
  tasks = [dict(index=i, path=path, start=s, end=e, chunk_bytes=job.chunk_bytes, fail=job.fail)
           for i, (s, e) in enumerate(_ranges(path, job.range_bytes))]
  results: list[dict] = []
  bar = _bar(os.path.getsize(path), f"common features {os.path.basename(path)}", job.progress, counters)

  def on_result(res):
    if "error" in res:
      line0 = 1 + sum(r["n_lines"] for r in results)
      l, kind, text = res["error"]
      raise ConversionError("--bad_lines=fail: " + _format_bad(path, line0 + l, kind, text))
    results.append(res)

  try:
    _run_tasks(_common_task, tasks, pool, bar, counters, on_result)
  finally:
    if bar is not None:
      bar.close()
  line0s = np.cumsum([1] + [r["n_lines"] for r in results])[:-1]
  bad = _merge_reports([(int(l0), r["report"]) for l0, r in zip(line0s, results)])
  warnings = _merge_reports([(int(l0), r["warnings"]) for l0, r in zip(line0s, results)])
  n_lines = int(sum(r["n_lines"] for r in results))
  cols = ("sparse", "dense", "mv_ids", "mv_w", "mv_len", "trunc", "user", "dup_single")
  have = [r for r in results if "keys" in r]
  if have:
    lines = np.concatenate([r.pop("lines") + l0 for l0, r in zip(line0s, results) if "keys" in r])
    keys = np.concatenate([r.pop("keys") for r in have])
    table = {k: np.concatenate([r.pop(k) for r in have]) for k in cols}  # one column's parts at a time
  else:
    keys, lines = np.zeros(0, np.int64), np.zeros(0, np.int64)
    table = {k: getattr(_empty_rows(spec, 0), k) for k in cols}
  results.clear()
  order = np.argsort(keys, kind="stable")  # stable: of equal keys, the first in the file is kept
  keys, lines = keys[order], lines[order]
  dup = np.zeros(len(keys), bool)
  dup[1:] = keys[1:] == keys[:-1]
  if dup.any():
    bad["counts"]["duplicate_common_feature_index"] = int(dup.sum())
    first_lines = sorted(int(x) for x in lines[dup])
    if job.fail:
      raise ConversionError("--bad_lines=fail: " + _format_bad(path, first_lines[0], "duplicate_common_feature_index", ""))
    bad["examples"] = sorted(bad["examples"] + [[l, "duplicate_common_feature_index", ""] for l in first_lines[:MAX_EXAMPLES]])
  if n_lines == 0 or (len(keys) == 0 and not bad["counts"]):
    bad["counts"]["empty_file"] = 1
    bad["examples"].append([0, "empty_file", ""])
    if job.fail:
      raise ConversionError(f"--bad_lines=fail: {path}: empty_file ({BAD_KINDS['empty_file']})")
  keep = order[~dup]
  for k in cols:
    _save_npy(os.path.join(cdir, f"{k}.npy"), table.pop(k)[keep])
  _save_npy(os.path.join(cdir, "keys.npy"), keys[~dup])
  _report_bad(path, bad, job.progress)
  meta = {"fingerprint": fp, "n_rows": int((~dup).sum()), "n_lines": n_lines, "bad": bad, "warnings": warnings}
  _write_json_atomic(meta_path, meta)
  return meta


def _save_npy(path: str, arr: np.ndarray) -> None:
  tmp = path + ".tmp.npy"
  np.save(tmp, np.ascontiguousarray(arr))
  os.replace(tmp, path)


def _bar(total: int, desc: str, progress: bool, counters):
  for c in counters:
    with c.get_lock():
      c.value = 0
  if not progress:
    return None
  from tqdm import tqdm

  bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
  bar._esm_t0 = time.time()
  return bar


def _convert_skeleton(job: _Job, fp: str, pool, counters) -> dict:
  """Skeleton byte ranges -> shards + sidecars (skipping ranges a previous run completed)."""
  path, out_dir = job.skeleton, job.out_dir
  ranges = _ranges(path, job.range_bytes)
  done: dict[int, dict] = {}
  tasks = []
  for i, (s, e) in enumerate(ranges):
    shard, sidecar = f"shard-{i:05d}{ds_lib.SHARD_SUFFIX}", f"shard-{i:05d}.done.json"
    side = _read_json(os.path.join(out_dir, sidecar))
    if side is not None and side.get("fingerprint") == fp and side.get("range") == [s, e] and (
        side["shard"]["num_rows"] == 0 or os.path.exists(os.path.join(out_dir, shard))):
      done[i] = side
      continue
    tasks.append(dict(index=i, path=path, start=s, end=e, chunk_bytes=job.chunk_bytes, fail=job.fail,
                      out_dir=out_dir, shard=shard, sidecar=sidecar, block_rows=job.block_rows, fingerprint=fp))
  if done and job.progress:
    _console(f"{out_dir}: resuming: {len(done)} of {len(ranges)} range(s) already converted")
  if job.fail:  # ranges converted earlier with --bad_lines=skip may hold bad lines
    for i in sorted(done):
      if done[i]["bad"]["counts"]:
        l, kind, text = min(done[i]["bad"]["examples"])
        raise ConversionError("--bad_lines=fail: " + _format_bad(path, _first_line_number(path, ranges[i][0]) + l,
                                                                 kind, text))
  bar = _bar(sum(t["end"] - t["start"] for t in tasks), f"skeleton {os.path.basename(path)}", job.progress, counters)

  def on_result(res):
    if "error" in res:
      i = res["index"]
      prev = [done[j]["n_lines"] for j in range(i) if j in done]
      line0 = 1 + sum(prev) if len(prev) == i else _first_line_number(path, ranges[i][0])
      l, kind, text = res["error"]
      raise ConversionError("--bad_lines=fail: " + _format_bad(path, line0 + l, kind, text))
    done[res["index"]] = res

  try:
    _run_tasks(_skeleton_task, tasks, pool, bar, counters, on_result)
  finally:
    if bar is not None:
      bar.close()
  sides = [done[i] for i in range(len(ranges))]
  line0s = np.cumsum([1] + [s["n_lines"] for s in sides])[:-1]
  bad = _merge_reports([(int(l0), s["bad"]) for l0, s in zip(line0s, sides)])
  n_lines = int(sum(s["n_lines"] for s in sides))
  if n_lines == 0:
    bad["counts"]["empty_file"] = 1
    bad["examples"].append([0, "empty_file", ""])
    if job.fail:
      raise ConversionError(f"--bad_lines=fail: {path}: empty_file ({BAD_KINDS['empty_file']})")
  _report_bad(path, bad, job.progress)
  warnings = _merge_reports([(int(l0), s["warnings"]) for l0, s in zip(line0s, sides)])
  if job.progress and warnings["counts"]:
    _console(f"{path}: warnings (rows kept): " + ", ".join(f"{k}={v:,}" for k, v in sorted(warnings["counts"].items())))
    for line, kind, text in warnings["examples"][:MAX_EXAMPLES]:
      _console("  " + _format_bad(path, line, kind, text))
  unknown: collections.Counter = collections.Counter()
  for s in sides:
    unknown.update(s["unknown_fields"])
  if job.progress and unknown:
    _console(f"{path}: fields not in the config (ignored): {dict(unknown.most_common(10))}")
  return {
      "sidecars": sides, "bad": bad, "warnings": warnings, "n_lines": n_lines,
      "unknown_fields": dict(unknown), "clicks": int(sum(s["clicks"] for s in sides)),
      "buys": int(sum(s["buys"] for s in sides)),
      "truncated_values": np.sum([s["truncated_values"] for s in sides], 0).tolist(),
      "truncated_rows": np.sum([s["truncated_rows"] for s in sides], 0).tolist(),
  }


def _first_line_number(path: str, start: int) -> int:
  """1-based number of the first line that starts at or after byte `start` (one pass up to it)."""
  if start == 0:
    return 1
  n = _count_lines(path, start)
  with open(path, "rb") as f:
    f.seek(start - 1)
    if f.read(1) != b"\n":
      n += 1  # the line crossing `start` belongs to the previous range
  return 1 + n


def _count_lines(path: str, end: int) -> int:
  n = 0
  with open(path, "rb") as f:
    while f.tell() < end:
      b = f.read(min(1 << 24, end - f.tell()))
      if not b:
        break
      n += b.count(b"\n")
  return n


def _dense_fields(spec: _Spec, sides, stats_from: str | None) -> list[ds_lib.DenseField]:
  fields = list(spec.schema.dense)
  if not fields:
    return fields
  if stats_from:
    ref = {f.name: f for f in ds_lib.open_dataset(stats_from).schema.dense}
    missing = [f.name for f in fields if f.name not in ref]
    if missing:
      raise ConversionError(f"--stats_from={stats_from}: has no dense field(s) {missing}")
    return [ref[f.name] for f in fields]
  n, mean_, m2 = 0, np.zeros(len(fields)), np.zeros(len(fields))
  for s in sides:
    if s["dense"]["n"]:
      n, mean_, m2 = _merge_moments(n, mean_, m2, s["dense"]["n"], np.array(s["dense"]["mean"]), np.array(s["dense"]["m2"]))
  out = []
  for j, f in enumerate(fields):
    mean = float(mean_[j]) if n else 0.0
    std = float(np.sqrt(m2[j] / n)) if n else 1.0
    std = std if std > 1e-12 * max(1.0, abs(mean)) else 1.0  # constant column
    sample = np.concatenate([np.asarray(s["dense"]["sample"][j], np.float64) for s in sides if s["dense"]["n"]]) if n else np.zeros(0)
    q = np.arange(1, spec.dense_buckets) / spec.dense_buckets
    edges = np.unique(np.quantile(sample, q)) if len(sample) else np.zeros(0)
    out.append(ds_lib.DenseField(f.name, mean, std, tuple(float(x) for x in edges)))
  return out


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags

  F = flags.FLAGS
  config = F.config if F["config"].present or F.config is not None else None
  try:
    convert(F.skeleton, F.common_features, F.out_dir, config=config, bad_lines=F.bad_lines,
            block_rows=F.block_rows, workers=F.workers, range_mb=F.range_mb, stats_from=F.stats_from,
            keep_common_index=F.keep_common_index)
  except (ConversionError, ds_lib.DatasetError) as e:
    _console(f"error: {e}")
    sys.exit(1)


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  flags.DEFINE_string("skeleton", None, "sample_skeleton_{train,test}.csv")
  flags.DEFINE_string("common_features", None, "common_features_{train,test}.csv")
  flags.DEFINE_string("out_dir", None, "output dataset directory (resumed if interrupted)")
  flags.DEFINE_enum("bad_lines", "skip", list(BAD_LINES_MODES), "skip: count and drop bad lines; fail: stop at the first")
  flags.DEFINE_integer("block_rows", 0, "rows per block (one grain record); 0: about 1 MB per block")
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "worker processes")
  flags.DEFINE_float("range_mb", 64.0, "skeleton MB per shard / task (also the resume granularity)")
  flags.DEFINE_string("stats_from", None, "take dense mean/std/boundaries from this dataset (the train split)")
  flags.DEFINE_bool("keep_common_index", False, "keep <out_dir>/_common after success")
  config_flags.DEFINE_config_file("config", None, "field config (default: configs/data/aliccp_raw.py's)")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
