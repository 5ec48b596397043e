"""Reading CSV / Parquet inputs for `csv_ingest`: batches of string columns with the physical line
number of each row, and the validation that sorts rows into good and bad.

What an input file is comes from its first bytes, not only its name: Parquet (`PAR1`), CSV
compressed with gzip, bzip2, zstd or lz4 (read through pyarrow's codecs), or plain CSV with or
without a UTF-8 byte-order mark. Archives (zip, tar), xz and binary files are refused with one line
naming the file and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from esmjax.data.format import files
from esmjax.data.ingest import shared as ingestion
from esmjax.data.ingest.csv.config import Cfg
from esmjax.data.ingest.shared import FLOAT32_MAX, MAX_EXAMPLES, IngestError

BAD_KINDS = {
  "empty_file": "the file has no data rows",
  "column_count": "wrong number of columns",
  "bad_label": "a label is not 0 or 1",
  "buy_without_click": "click=0 with a post-click label = 1",
  "bad_dense": "a dense value is not a number",
  "nonfinite_dense": "a dense value is not a finite float32 number (nan, inf, or beyond ±3.4e38)",
  "bad_multi": "a multi-valued cell has a weight that is not a finite float32 number",
  "bad_sample_id": "sample_id is not an integer",
}
_FLOAT_RE = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_INT_RE = r"^\s*-?\d{1,18}\s*$"
_NONFINITE_RE = r"^\s*[-+]?(nan|inf|infinity)\s*$"  # matched ignoring case
_CODECS = {"gzip": "gzip", "bzip2": "bz2", "zstd": "zstd", "lz4": "lz4"}  # files.sniff -> codec


class OrderedBadLines:
  """Bad rows of all inputs, committed in line order; with `fail`, the first in file order raises.

  Rows rejected by the CSV parser (wrong column count) are reported as it parses, possibly ahead of
  the batch being validated, so events wait until every line before them was checked.
  """

  def __init__(self, fail: bool):
    self.fail = fail
    self.report = ingestion.BadLines()
    self._pending: list[tuple[int, str, str, str]] = []  # (line, where, kind, text)

  def note(self, line: int, where: str, kind: str, text: str) -> None:
    self._pending.append((int(line), where, kind, text))

  def count(self, kind: str, n: int) -> None:
    self.report.count(kind, n)

  def flush(self, upto: int | None = None) -> None:
    """Commits the events on lines <= upto (all when None), in line order."""
    ready = sorted(e for e in self._pending if upto is None or e[0] <= upto)
    self._pending = [e for e in self._pending if not (upto is None or e[0] <= upto)]
    for _, where, kind, text in ready:
      if self.fail:
        raise IngestError(
          "bad_lines=fail: " + ingestion.describe(BAD_KINDS, where, kind, text[:200])
        )
      self.report.add(where, kind, text[:200])


def _input(path: str, fmt: str) -> tuple[str, str | None]:
  """(csv | parquet, pyarrow codec or None) of an input file; IngestError naming it when it is an
  archive, compressed in a way pyarrow cannot read, or binary."""
  kind = files.sniff(path)
  if fmt == "auto":
    fmt = "parquet" if kind == "parquet" or path.endswith((".parquet", ".pq")) else "csv"
  if fmt == "parquet":
    return fmt, None
  if kind in _CODECS and pa.Codec.is_available(_CODECS[kind]):
    return fmt, _CODECS[kind]
  if kind == "binary":
    raise IngestError(
      f"{path} does not look like text (it holds NUL bytes at its start): a CSV "
      "input is UTF-8 text (plain or gzip/bzip2/zstd/lz4-compressed), a Parquet "
      "one starts with PAR1"
    )
  if kind and kind != "parquet":
    hint = files.UNPACK_HINT.get(kind, "").format(path)
    raise IngestError(
      f"{path} is {files.describe_kind(kind)}: csv_ingest reads CSV files (plain "
      f"or gzip/bzip2/zstd/lz4-compressed) and Parquet files; extract it first "
      f"(`{hint}`)"
    )
  return fmt, None


def _first_line(path: str, codec: str | None) -> str:
  """The first line, decoded (a UTF-8 byte-order mark dropped)."""
  with pa.input_stream(path, compression=codec) as f:
    head = f.read(1 << 20)
  return head.split(b"\n", 1)[0].decode("utf-8-sig", "replace").rstrip("\r\n")


def _column_names(path: str, cfg: Cfg, first: str) -> tuple[list[str], int]:
  """(the file's column names, header lines to skip). A header, wherever there is one, names the
  columns: they are read by name, in whatever order the file has them (`config.columns` is the
  order of a file without a header). With header='auto', line 1 is a header when it equals
  `columns`, when `columns` is empty, or when it names every column the config reads."""
  raw = cfg.raw
  cols = list(raw["columns"])
  header_cells = [c.strip() for c in first.split(raw["delimiter"])]
  has_header = raw["header"] == "yes" or (
    raw["header"] == "auto"
    and (not cols or header_cells == cols or all(c in header_cells for c in cfg.needed))
  )
  if has_header:
    names, skip = header_cells, 1
    dup = sorted({c for c in names if c and names.count(c) > 1})
    if dup:
      raise IngestError(
        f"{path}: the header names column(s) {dup} more than once; columns are read by their "
        "header name, so give each column its own name"
      )
  else:
    if not cols:
      raise IngestError(
        f"{path}: config.header={raw['header']!r} needs config.columns (the file has no header)"
      )
    names, skip = cols, 0
  missing = [c for c in cfg.needed if c not in names]
  if missing:
    where = "header" if has_header else "config.columns"
    raise IngestError(
      f"{path}: column(s) {missing} named in the config are not in the file's columns {names} "
      f"(from its {where})"
    )
  return names, skip


# (string columns, line numbers, 'row ' for Parquet or '' for CSV)
Batches = Iterator[tuple[pa.RecordBatch, np.ndarray, str]]


def _csv_batches(path: str, cfg: Cfg, bad: OrderedBadLines | None, codec: str | None) -> Batches:
  import pyarrow.csv as pcsv

  raw = cfg.raw
  names, skip = _column_names(path, cfg, _first_line(path, codec))
  invalid: list[tuple[int, str]] = []

  def on_invalid(row):
    invalid.append((row.number, row.text))
    return "skip"

  reader = pcsv.open_csv(  # pyarrow skips a UTF-8 byte-order mark itself
    pa.input_stream(path, compression=codec) if codec else path,
    read_options=pcsv.ReadOptions(
      use_threads=False, column_names=names, skip_rows=skip, block_size=1 << 22
    ),
    parse_options=pcsv.ParseOptions(
      delimiter=raw["delimiter"], invalid_row_handler=on_invalid, ignore_empty_lines=False
    ),
    convert_options=pcsv.ConvertOptions(
      column_types={c: pa.string() for c in names},
      include_columns=cfg.needed,
      strings_can_be_null=False,
      quoted_strings_can_be_null=False,
    ),
  )
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


def _parquet_batches(path: str, cfg: Cfg) -> Batches:
  import pyarrow.parquet as pq

  f = pq.ParquetFile(path)
  names = f.schema_arrow.names
  missing = [c for c in cfg.needed if c not in names]
  if missing:
    raise IngestError(
      f"{path}: column(s) {missing} named in the config are not in the file's columns {names}"
    )
  dup = sorted({c for c in cfg.needed if names.count(c) > 1})
  if dup:
    raise IngestError(
      f"{path}: the file has more than one column named {dup}; give each column its own name"
    )
  row = 1
  for batch in f.iter_batches(batch_size=int(cfg.raw["read_rows"]), columns=cfg.needed):
    arrays = [_as_text(a) for a in batch.columns]
    arrays = [pc.fill_null(a, "") for a in arrays]
    yield (
      pa.RecordBatch.from_arrays(arrays, names=batch.schema.names),
      np.arange(row, row + batch.num_rows),
      "row ",
    )
    row += batch.num_rows


def _as_text(a: pa.Array) -> pa.Array:
  """A Parquet column as the text a CSV cell would hold: booleans as 1 / 0 (labels stored as
  booleans read as labels), other types by pyarrow's cast."""
  if pa.types.is_boolean(a.type):
    return pc.if_else(a, "1", "0")
  return pc.cast(a, pa.string()) if a.type != pa.string() else a


def batches(path: str, cfg: Cfg, bad: OrderedBadLines | None) -> Batches:
  """The file's rows in batches (`bad` collects the rows the CSV parser rejects). A file pyarrow
  cannot decode (not UTF-8, a compressed stream or a Parquet file cut short) raises IngestError
  naming it."""
  if os.path.getsize(path) == 0:
    return
  fmt, codec = _input(path, cfg.raw["format"])
  try:
    if fmt == "csv":
      yield from _csv_batches(path, cfg, bad, codec)
    else:
      yield from _parquet_batches(path, cfg)
  except (pa.ArrowInvalid, OSError, EOFError) as e:
    raise _undecodable(path, fmt, codec, e) from None


def _undecodable(path: str, fmt: str, codec: str | None, e: Exception) -> IngestError:
  detail = " ".join(str(e).split())[:240] or type(e).__name__
  if "UTF8" in detail or "UTF-8" in detail:
    why = "is not UTF-8 text; re-encode it (e.g. `iconv -f latin1 -t utf-8`)"
  elif codec:
    why = f"is a {codec} stream that cannot be decompressed (cut short or corrupt); copy it again"
  elif fmt == "parquet":
    why = "is not a readable Parquet file (cut short or corrupt); write or copy it again"
  else:
    why = "cannot be read as CSV"
  return IngestError(f"{path} {why} ({detail})")


def _numbers(a: pa.Array) -> tuple[np.ndarray, np.ndarray]:
  """Per cell of a string column: is it a decimal number, and is it one whose float32 is finite."""
  number = np.asarray(pc.match_substring_regex(a, _FLOAT_RE))
  finite = number.copy()
  if number.any():
    v = np.asarray(pc.cast(pc.utf8_trim_whitespace(pc.filter(a, pa.array(number))), pa.float64()))
    finite[number] = np.abs(v) <= FLOAT32_MAX
  return number, finite


def check_cell_sizes(cols: dict, lines: np.ndarray, where: str, path: str, cap: int) -> None:
  """IngestError naming the file, line and column of the first cell longer than `cap` bytes."""
  over = None
  for name, a in cols.items():
    sizes = np.asarray(pc.binary_length(a).fill_null(0))
    big = np.flatnonzero(sizes > cap)
    if len(big) and (over is None or big[0] < over[0]):
      over = (int(big[0]), name, int(sizes[big[0]]))
  if over is not None:
    i, name, size = over
    raise IngestError(
      f"{path}:{where}{int(lines[i])}: column {name!r} holds a cell of {size:,} bytes, over "
      f"config.max_cell_bytes={cap:,} (an unclosed quote joins the lines after it into one "
      "cell); fix the file, or raise config.max_cell_bytes"
    )


def good_rows(
  batch: pa.RecordBatch,
  lines: np.ndarray,
  where: str,
  path: str,
  cfg: Cfg,
  bad: OrderedBadLines | None,
) -> np.ndarray:
  """Mask of the rows to keep; bad ones are reported (pass 1) in line order, first reason only."""
  n = batch.num_rows
  reason = np.zeros(n, np.int64)  # 0 ok, -1 blank, else index into kinds
  culprit = [""] * n  # the column a bad row is bad in, named first in its example
  kinds = list(BAD_KINDS)
  cols = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
  check_cell_sizes(cols, lines, where, path, int(cfg.raw["max_cell_bytes"]))
  blank = np.ones(n, bool)
  for c in cfg.needed:
    blank &= np.asarray(pc.equal(pc.utf8_length(cols[c]), 0))
  reason[blank] = -1

  def flag(mask, kind, column=""):
    new = np.flatnonzero((reason == 0) & mask)
    reason[new] = kinds.index(kind) + 1
    for i in new[:MAX_EXAMPLES] if column else ():
      culprit[i] = column

  lab = {}
  for name, col in cfg.labels:
    a = pc.utf8_trim_whitespace(cols[col])
    lab[name] = np.asarray(pc.equal(a, "1"))
    flag(~np.asarray(pc.is_in(a, value_set=pa.array(["0", "1"]))), "bad_label", col)
  for name, col in cfg.labels:
    if name != "click":
      flag(lab[name] & ~lab["click"], "buy_without_click", col)
  for c in cfg.dense:
    a = cols[c]
    number, finite = _numbers(a)
    word = np.asarray(pc.match_substring_regex(a, _NONFINITE_RE, ignore_case=True))
    flag(~(np.asarray(pc.equal(pc.utf8_length(a), 0)) | number | word), "bad_dense", c)
    flag(word | (number & ~finite), "nonfinite_dense", c)
  for m in cfg.multi:
    if m.weight_sep:  # every `id<weight_sep>weight` item needs a finite numeric weight
      lists = pc.split_pattern(cols[m.ids.column], m.sep)
      row_of = np.repeat(np.arange(n), np.asarray(pc.list_value_length(lists)))
      parts = pc.split_pattern(pc.list_flatten(lists), m.weight_sep, max_splits=1)
      has_w = np.asarray(pc.equal(pc.list_value_length(parts), 2))
      okw = np.ones(len(has_w), bool)
      if has_w.any():
        wt = pc.list_element(pc.filter(parts, pa.array(has_w)), 1)
        okw[has_w] = _numbers(wt)[1]
      badrow = np.zeros(n, bool)
      badrow[row_of[~okw]] = True
      flag(badrow, "bad_multi", m.ids.column)
  if cfg.sample_id:
    flag(
      ~np.asarray(pc.match_substring_regex(cols[cfg.sample_id], _INT_RE)),
      "bad_sample_id",
      cfg.sample_id,
    )
  if bad is not None:
    for code in np.unique(reason[reason > 0]):  # a kind's first rows as examples, the rest counted
      rows = np.flatnonzero(reason == code)
      kind = kinds[int(code) - 1]
      for i in rows[:MAX_EXAMPLES]:  # the batch's first bad row is always among these
        text = " ".join(f"{c}={cols[c][int(i)].as_py()}" for c in cfg.needed)
        if culprit[i]:
          text = f"{culprit[i]}={cols[culprit[i]][int(i)].as_py()}; row: {text}"
        bad.note(int(lines[i]), f"{path}:{where}{int(lines[i])}", kind, text)
      bad.count(kind, max(0, len(rows) - MAX_EXAMPLES))
    if n:
      bad.flush(int(lines[-1]))
  return reason == 0
