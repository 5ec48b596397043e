"""Vectorised parsing of Ali-CCP lines and placing their feature items into block columns.

A chunk of complete lines is parsed at once with NumPy (no Python loop per line or per item): line
shapes, labels and the `field\\x02id\\x03value` items of every good line; `place_items` maps the
items' ids (`ids.hash_ids`) and writes them into the rows' sparse, multi-valued and dense columns.
"""

from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np

from esmjax.data.format import ids as ids_lib
from esmjax.data.ingest.aliccp.spec import CODE_KINDS, KIND_CODES, Spec
from esmjax.data.ingest.shared import FLOAT32_MAX, MAX_EXAMPLES, BadLines

_TAIL = 64  # zero bytes after every parsed buffer: tokens this wide are sliced without bound checks


def _gather(a: np.ndarray, s: np.ndarray, length: np.ndarray, w: int) -> np.ndarray:
  """Left-aligned, zero-padded token bytes [n, w] (`a` ends with _TAIL zero bytes)."""
  if w <= _TAIL:  # rows of a sliding-window view: a memcpy per token instead of a gather per byte
    m = np.lib.stride_tricks.sliding_window_view(a, w)[s]
  else:
    m = a[np.minimum(s[:, None] + np.arange(w), len(a) - 1)]
  m *= np.arange(w) < length[:, None]
  return m


def parse_uint(a, s, e, maxw: int = 18):
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
_NONFINITE_RE = re.compile(rb"[-+]?(nan|inf|infinity)", re.IGNORECASE)


def _parse_float(a, s, e):
  """Decimal tokens (and nan / inf spellings) -> (float64, ok). Ali-CCP values repeat a lot ("1.0",
  log-counts), so tokens of up to 8 bytes are packed into one uint64 each and only the distinct ones
  are parsed."""
  n = len(s)
  length = e - s
  val, ok = np.zeros(n, np.float64), np.zeros(n, bool)
  short = (length >= 1) & (length <= 8)
  idx = np.flatnonzero(short)
  if len(idx):
    codes = _gather(a, s[idx], length[idx], 8).view(np.uint64).reshape(-1)
    uniq = np.unique(codes)  # sort-based; searchsorted is much cheaper than return_inverse
    inv = np.searchsorted(uniq, codes)
    uv, uok = np.zeros(len(uniq)), np.zeros(len(uniq), bool)
    raw = uniq.tobytes()
    for i, u in enumerate(raw[k : k + 8].rstrip(b"\0") for k in range(0, 8 * len(uniq), 8)):
      if _FLOAT_RE.fullmatch(u) or _NONFINITE_RE.fullmatch(u):
        uv[i], uok[i] = float(u), True
    val[idx], ok[idx] = uv[inv], uok[inv]
  for i in np.flatnonzero(~short & (length > 8)):  # rare: long spellings
    t = bytes(a[s[i] : e[i]])
    if _FLOAT_RE.fullmatch(t) or _NONFINITE_RE.fullmatch(t):
      val[i], ok[i] = float(t), True
  return val, ok


def _lookup_fields(a, s, e, spec: Spec) -> np.ndarray:
  """Field-name tokens -> field number, -1 for names not in the config."""
  length = e - s
  m = _gather(a, s, np.minimum(length, 8), 8)
  codes = np.ascontiguousarray(m).view(np.uint64).reshape(-1)
  pos = np.minimum(np.searchsorted(spec.codes, codes), len(spec.codes) - 1)
  hit = (spec.codes[pos] == codes) & (length <= 8)
  return np.where(hit, spec.code_field[pos], -1)


@dataclasses.dataclass
class Parsed:
  n_lines: int
  line: np.ndarray  # [n] chunk-local line index of each good row
  cols: list  # per header column: (start, end) arrays for good rows
  item_row: np.ndarray  # [k] row index into the good rows
  item_field: np.ndarray  # [k] field number, -1 unknown
  item_key: np.ndarray  # [k] int64 raw id
  item_val: np.ndarray  # [k] float32 value
  reason: np.ndarray  # [n_lines] 0 good, -1 blank, else KIND_CODES
  warn_mismatch: np.ndarray  # [n] feature_num mismatch per good row
  unknown_fields: collections.Counter
  a: np.ndarray
  starts: np.ndarray
  ends: np.ndarray


def parse_chunk(buf: bytes, n_cols: int, spec: Spec, skeleton: bool) -> Parsed:
  """Parses complete lines (buf ends with b'\\n'): shapes, labels and feature items, all vectorised.

  One scan finds every separator (`,` `\\x01` `\\x02` `\\x03` `\\n`); a good line is n_cols-1 commas
  then the items' separators in the exact pattern \\x02 \\x03 (\\x01 \\x02 \\x03)*, so items are
  read straight off the separator array without searching. The checks run in this order, and a
  line's reason is the first it fails.
  """
  s = _scan(buf)
  rs, sl, col_s, col_e = _split_columns(s, n_cols)
  shape_ok = s.reason == 0
  if skeleton:
    _check_skeleton_columns(s, sl, col_s, col_e)
  it = _feature_items(s, rs, sl, col_s, shape_ok)

  # feature_num (second-to-last header column) against the items actually there.
  good = s.reason == 0
  rows = np.flatnonzero(good)
  row_of_line = np.full(s.n_lines, -1, np.int64)
  row_of_line[rows] = np.arange(len(rows))
  sel = np.flatnonzero(good[sl])  # positions in sl/col_* of good rows
  fnum, fnum_ok = parse_uint(s.a, col_s[sel, -2], col_e[sel, -2])
  nfs = it.n_seps[rows]
  mismatch = ~fnum_ok | (fnum != np.where(nfs > 0, (nfs + 1) // 3, 0))

  ik = good[it.line]
  fld = _lookup_fields(s.a, it.start[ik], it.p2[ik], spec)
  return Parsed(
    n_lines=s.n_lines,
    line=rows,
    cols=[(col_s[sel, j], col_e[sel, j]) for j in range(n_cols)],
    item_row=row_of_line[it.line[ik]],
    item_field=fld,
    item_key=it.key[ik],
    item_val=it.val[ik].astype(np.float32),
    reason=s.reason,
    warn_mismatch=mismatch,
    unknown_fields=_unknown_fields(s.a, it.start[ik], it.p2[ik], fld),
    a=s.a,
    starts=s.starts,
    ends=s.ends,
  )


@dataclasses.dataclass
class _Scan:
  """A chunk's separators and line bounds, and each line's reason (0 good, -1 blank, else the
  KIND_CODES of the first check it failed)."""

  a: np.ndarray  # the chunk's bytes, then _TAIL zero bytes
  sep: np.ndarray  # positions of the separators `,` `\x01` `\x02` `\x03` `\n`
  code: np.ndarray  # their bytes
  is_nl: np.ndarray
  nl_idx: np.ndarray  # [n_lines] separator index of each line's `\n`
  first: np.ndarray  # [n_lines] separator index of each line's first separator
  starts: np.ndarray
  ends: np.ndarray  # before the `\n` (and a `\r` before it)
  reason: np.ndarray

  @property
  def n_lines(self) -> int:
    return len(self.nl_idx)

  def flag(self, mask: np.ndarray, kind: str) -> None:
    """Lines of `mask` not yet bad get `kind` as their reason."""
    self.reason[(self.reason == 0) & mask] = KIND_CODES[kind]


def _scan(buf: bytes) -> _Scan:
  a = np.frombuffer(buf + bytes(_TAIL), np.uint8)
  body = a[: len(buf)]
  sep = np.flatnonzero((body <= 3) | (body == 44) | (body == 10))
  code = body[sep]
  is_nl = code == 10
  nl_idx = np.flatnonzero(is_nl)
  ends = sep[nl_idx]
  starts = np.empty_like(ends)
  starts[:1] = 0
  starts[1:] = ends[:-1] + 1
  cr = (ends > starts) & (a[np.maximum(ends - 1, 0)] == 13)
  ends[cr] -= 1
  first = np.empty_like(nl_idx)
  first[:1] = 0
  first[1:] = nl_idx[:-1] + 1
  reason = np.zeros(len(nl_idx), np.int64)
  reason[ends == starts] = -1  # blank lines are ignored
  return _Scan(a, sep, code, is_nl, nl_idx, first, starts, ends, reason)


def _split_columns(s: _Scan, n_cols: int):
  """Flags lines without n_cols columns or with item separators among the header columns; returns
  (separator index where each line's feature list begins, the well-shaped lines, their columns'
  start and end offsets [len(sl), n_cols])."""
  ccum = np.zeros(len(s.code) + 1, np.int64)
  np.cumsum(s.code == 44, out=ccum[1:])
  s.flag(ccum[s.nl_idx] - ccum[s.first] != n_cols - 1, "column_count")
  rs = s.first + n_cols - 1  # separator index where the feature list's separators begin
  # \x01-\x03 among the header columns:
  s.flag(ccum[np.minimum(rs, len(s.code))] - ccum[s.first] != n_cols - 1, "bad_feature_item")
  sl = np.flatnonzero(s.reason == 0)
  commas = s.sep[s.first[sl, None] + np.arange(n_cols - 1)]
  col_s = np.concatenate([s.starts[sl, None], commas + 1], axis=1)
  col_e = np.concatenate([commas, s.ends[sl, None]], axis=1)
  return rs, sl, col_s, col_e


def _check_skeleton_columns(s: _Scan, sl, col_s, col_e) -> None:
  """Flags skeleton lines whose labels are not 0/1, buy without click, or a bad sample id."""
  a, n_lines = s.a, s.n_lines
  ch = a[col_s[:, 1:3]]
  ln = col_e[:, 1:3] - col_s[:, 1:3]
  m = np.zeros(n_lines, bool)
  m[sl] = ((ln != 1) | ((ch != 48) & (ch != 49))).any(1)
  s.flag(m, "bad_label")
  m[:] = False
  m[sl] = (ch[:, 1] == 49) & (ch[:, 0] != 49)
  s.flag(m, "buy_without_click")
  _, sid_ok = parse_uint(a, col_s[:, 0], col_e[:, 0])
  m[:] = False
  m[sl] = ~sid_ok
  s.flag(m, "bad_sample_id")


@dataclasses.dataclass
class _Items:
  n_seps: np.ndarray  # [n_lines] separators in the line's feature list
  line: np.ndarray  # [k] line of each item
  start: np.ndarray  # [k] offset of the item's field name
  p2: np.ndarray  # [k] offset of its \x02
  key: np.ndarray  # [k] int64 raw id
  val: np.ndarray  # [k] float64 value


def _feature_items(s: _Scan, rs, sl, col_s, shape_ok) -> _Items:
  """Flags lines whose feature list breaks the separator pattern, has an empty or non-numeric part
  or a non-finite value; returns the items of the lines still good before these checks."""
  a, sep, code, is_nl, n_lines = s.a, s.sep, s.code, s.is_nl, s.n_lines
  nfs = s.nl_idx - rs  # separators in the feature list
  fl_s = np.full(n_lines, -1, np.int64)
  fl_s[sl] = col_s[:, -1]
  text = s.ends > fl_s
  s.flag(shape_ok & (((nfs == 0) & text) | ((nfs > 0) & (nfs % 3 != 2))), "bad_feature_item")
  line_of = np.cumsum(is_nl) - is_nl
  line_at = np.minimum(line_of, max(n_lines - 1, 0))
  r = np.arange(len(code)) - rs[line_at] if n_lines else np.zeros(0, np.int64)
  in_fl = ~is_nl & (r >= 0) & shape_ok[line_at] if n_lines else np.zeros(0, bool)
  expect = np.array([2, 3, 1], np.uint8)[r % 3]
  m = np.zeros(n_lines, bool)
  m[line_of[in_fl & (code != expect)]] = True
  s.flag(m, "bad_feature_item")
  k2 = np.flatnonzero(in_fl & (r % 3 == 0) & (s.reason == 0)[line_at])
  it_l = line_of[k2]
  p2, p3 = sep[k2], sep[k2 + 1]
  it_e = np.where(code[k2 + 2] == 10, s.ends[it_l], sep[k2 + 2])
  it_s = np.where(r[k2] == 0, fl_s[it_l], sep[np.maximum(k2 - 1, 0)] + 1)
  it_ok = (p2 > it_s) & (p3 > p2 + 1) & (it_e > p3 + 1)
  key, key_ok = parse_uint(a, p2 + 1, p3)
  nonnum = it_ok & ~key_ok  # non-numeric ids (not in Ali-CCP, tolerated): 64-bit hash of the bytes
  if nonnum.any():
    idx = np.flatnonzero(nonnum)
    ln = p3[idx] - p2[idx] - 1
    key[idx] = ids_lib.bytes_keys(_gather(a, p2[idx] + 1, ln, int(ln.max())), ln)
  val, val_ok = _parse_float(a, p3 + 1, it_e)
  it_ok &= val_ok
  m = np.zeros(n_lines, bool)
  m[it_l[~it_ok]] = True
  s.flag(m, "bad_feature_item")
  m[:] = False
  m[it_l[it_ok & ~(np.abs(val) <= FLOAT32_MAX)]] = True  # nan, inf, or inf once made float32
  s.flag(m, "nonfinite_value")
  return _Items(nfs, it_l, it_s, p2, key, val)


def _unknown_fields(a, start, p2, fld) -> collections.Counter:
  """How often each field name not in the config occurs (the first 10000 such items)."""
  unknown = collections.Counter()
  if (fld < 0).any():
    for i in np.flatnonzero(fld < 0)[:10000]:
      unknown[bytes(a[start[i] : p2[i]]).decode("utf-8", "replace")] += 1
  return unknown


def line_text(p: Parsed, i: int) -> str:
  raw = bytes(p.a[p.starts[i] : min(p.ends[i], p.starts[i] + 160)])
  text = raw.decode("utf-8", "replace")
  return text.replace("\x01", "^A").replace("\x02", "^B").replace("\x03", "^C")


def keys_of(a, s, e) -> np.ndarray:
  """common_feature_index strings -> int64 keys (64-bit hash of the bytes, any spelling)."""
  ln = e - s
  if not len(s):
    return np.zeros(0, np.int64)
  return ids_lib.bytes_keys(_gather(a, s, ln, max(int(ln.max()), 1)), ln)


# ---------------------------------------------------------------------------------------------
# Rows: mapping ids and placing items into the block's columns.


@dataclasses.dataclass
class Rows:
  sparse: np.ndarray
  dense: np.ndarray
  mv_ids: np.ndarray
  mv_w: np.ndarray
  mv_len: np.ndarray  # int16 [n, M]
  trunc: np.ndarray  # int32 [n, M] values dropped by max_len
  user: np.ndarray
  dup_single: np.ndarray  # int64 [n] duplicate single values per row


def empty_rows(spec: Spec, n: int) -> Rows:
  lsum = int(spec.schema.mv_total_len)
  return Rows(
    np.zeros((n, spec.n_sparse), np.int32),
    np.zeros((n, len(spec.schema.dense)), np.float32),
    np.zeros((n, lsum), np.int32),
    np.zeros((n, lsum), np.float32),
    np.zeros((n, spec.n_multi), np.int16),
    np.zeros((n, spec.n_multi), np.int32),
    np.full(n, -1, np.int64),
    np.zeros(n, np.int64),
  )


def place_items(r: Rows, spec: Spec, row, field, key, val) -> None:
  """Maps the items' ids and writes them into `r` (in place) on top of what is there."""
  known = field >= 0
  row, field, key, val = row[known], field[known], key[known], val[known]
  mixed = ids_lib.splitmix64(key.view(np.uint64) ^ spec.salts[field])
  hashed = (mixed % spec.buckets[field]).astype(np.int32) + 2
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


def record_bad_lines(report: BadLines, p: Parsed, line0: int) -> tuple[int, str, str] | None:
  """Records the chunk's bad lines (line numbers from `line0`); returns the first (line, kind,
  text)."""
  bad = np.flatnonzero(p.reason > 0)
  for kind_code, cnt in zip(*np.unique(p.reason[bad], return_counts=True), strict=True):
    kind = CODE_KINDS[int(kind_code)]
    shown = 0
    for i in bad[p.reason[bad] == kind_code][:MAX_EXAMPLES]:
      if not report.wants_example(kind):
        break
      report.add(line0 + int(i), kind, line_text(p, int(i)))
      shown += 1
    report.count(kind, int(cnt) - shown)
  if not len(bad):
    return None
  i = int(bad[0])
  return line0 + i, CODE_KINDS[int(p.reason[i])], line_text(p, i)


def record_warnings(report: BadLines, kind: str, p: Parsed, rows: np.ndarray, line0: int) -> None:
  """Counts rows (indices into p.line) under a warning kind, with the first few as examples."""
  for i in rows[:MAX_EXAMPLES]:
    li = int(p.line[i])
    report.add(line0 + li, kind, line_text(p, li))
  report.count(kind, max(0, len(rows) - MAX_EXAMPLES))
