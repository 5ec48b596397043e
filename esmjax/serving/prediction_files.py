"""Prediction files: CSV rows formatted block by block in NumPy, or Parquet.

The CSV format is `csv.writer`'s (`\\r\\n` line ends) with the sample id as a decimal integer and
every prediction as Python's `'%.7g' % float(v)`. `csv_block` produces exactly those bytes for a
block of rows without a Python loop per row: every field of every row is laid out in a fixed
template of characters, with a mask of the characters that row keeps, and the block is
`chars[keep]`, row-major. A float's template holds every character any `%.7g` body of the fast
path can have, in order (`-0.000d.d.d.d.d.d.de-056`: a candidate point after each digit, three
leading zeros, both exponents), so that the layouts differ only in the mask, which is one row of a
table indexed by (decimal exponent, trailing zero digits).

The predictions are float32 (or narrower, widened exactly). For 1e-5 <= |v| < 1e6 the seven
significant digits are `rint(|v| * 10**k)` in float64 for some k <= 12: a float32 has 24
mantissa bits and 5**12 < 2**28, so the product is exact and `rint` (half to even) rounds the
exact decimal value as Python's formatting does. Zeros are written directly; other values (tiny,
huge, nan, inf) and wider inputs go through Python's formatting, one value at a time.
"""

from __future__ import annotations

import numpy as np

CSV_ROW_END = b"\r\n"  # csv.writer's default line terminator
_DIGITS = 7  # '%.7g'
_LO, _HI = 1e-5, 1e6  # the exact NumPy path (module doc)
_POW10 = np.array([float(10**i) for i in range(14)])  # exact
_PAIRS = np.array([[ord(c) for c in f"{i:02d}"] for i in range(100)], np.uint8)
_QUADS = np.array([[ord(c) for c in f"{i:04d}"] for i in range(10_000)], np.uint8)

# The float template: sign, '0.000', then each digit followed by a candidate point (none after
# the last), then 'e-0' and the exponent digits 5 and 6.
_TEMPLATE = np.frombuffer(b"-0.0000.0.0.0.0.0.0e-056", np.uint8)
FLOAT_WIDTH = len(_TEMPLATE)  # 24: also holds any '%.7g' of the slow path (13 characters at most)
_DIGIT_COLS = np.array([6, 8, 10, 12, 14, 16, 18])  # d0..d6
_POINT_AFTER = _DIGIT_COLS[:-1] + 1  # the candidate point after d0..d5


def _keep_row(x: int, tz: int) -> np.ndarray:
  """The template characters of a positive fast-path value with decimal exponent x whose seven
  digits end in tz zeros: trailing zeros after the point, and a point with nothing after it, drop
  out."""
  keep = np.zeros(FLOAT_WIDTH, bool)
  if 0 <= x < _DIGITS:  # 'ddd.dddd'
    frac = _DIGITS - 1 - x
    shown = x + 1 + max(frac - tz, 0)
    keep[_DIGIT_COLS[:shown]] = True
    if tz < frac:
      keep[_POINT_AFTER[x]] = True
  elif -4 <= x < 0:  # '0.000ddddddd': '0.', -x - 1 zeros, the digits
    keep[1:3] = True
    keep[3 : 3 + (-x - 1)] = True
    keep[_DIGIT_COLS[: _DIGITS - tz]] = True
  else:  # 'd.dddddde-0X'
    keep[_DIGIT_COLS[: _DIGITS - tz]] = True
    keep[_POINT_AFTER[0]] = tz < _DIGITS - 1
    keep[19:22] = True  # 'e-0'
    keep[23 if x == -6 else 22] = True
  return keep


# Row (x + 6) * _DIGITS + tz: the template characters kept; the last row keeps none.
_KEEP = np.stack(
  [_keep_row(x, t) for x in range(-6, _DIGITS) for t in range(_DIGITS)]
  + [np.zeros(FLOAT_WIDTH, bool)]
)
# Trailing zero digits of 0..999 (3 for 0) and of 0..9999.
_TZ3 = np.array([3] + [len(str(i)) - len(str(i).rstrip("0")) for i in range(1, 1000)], np.int32)
_TZ4 = np.array([4] + [len(str(i)) - len(str(i).rstrip("0")) for i in range(1, 10_000)], np.int32)


def int_width(values: np.ndarray) -> int:
  """The columns `int_into` needs for `values`: a sign and an even number of digits."""
  v = np.asarray(values)
  top = max(abs(int(v.max())), abs(int(v.min()))) if v.size else 0
  digits = len(str(top))
  return 1 + digits + digits % 2


def int_into(chars: np.ndarray, keep: np.ndarray, values: np.ndarray) -> None:
  """Writes integers as `str(int(v))` into `chars` / `keep` [n, int_width(values)]: the sign in
  column 0, digits right-aligned."""
  v = np.asarray(values)
  if v.dtype.kind not in "iu":
    raise TypeError(f"int_into: integer ids expected, got dtype {v.dtype}")
  n, width = chars.shape
  neg = v < 0 if v.dtype.kind == "i" else np.zeros(n, bool)
  if v.dtype.kind == "i" and not neg.any():
    mag = v.astype(np.int64, copy=False)
  else:
    mag = v.astype(np.int64).view(np.uint64) if v.dtype.kind == "i" else v.astype(np.uint64)
    mag = np.where(neg, mag.dtype.type(0) - mag, mag)  # two's complement: exact for the minimum
  chars[:, 0] = ord("-")
  rest, hundred = mag.copy(), mag.dtype.type(100)
  for j in range(width - 2, 0, -2):
    chars[:, j : j + 2] = _PAIRS[rest % hundred]
    rest //= hundred
  ndig = np.ones(n, np.int64)  # from the first non-zero digit on (the last one always)
  for d in range(1, width - 1):
    ndig += mag >= mag.dtype.type(10**d)
  keep[:] = np.arange(width) >= width - ndig[:, None]
  keep[:, 0] = neg


def float_into(chars: np.ndarray, keep: np.ndarray, values: np.ndarray) -> None:
  """Writes floats as Python's `'%.7g' % float(v)` into `chars` / `keep` [n, FLOAT_WIDTH]
  (module doc)."""
  v = np.asarray(values)
  if v.dtype.kind != "f":
    try:
      np.finfo(v.dtype)  # ml_dtypes' floats (bfloat16, ...): widened exactly
    except ValueError:
      raise TypeError(f"float_into: floating values expected, got dtype {v.dtype}") from None
    v = v.astype(np.float32)
  n = v.shape[0]
  exact = v.dtype.itemsize <= 4  # float32, float16, bfloat16: widened to float32 exactly
  with np.errstate(invalid="ignore"):
    v64 = v.astype(np.float64)
    a = np.abs(v64)
    fast = (a >= _LO) & (a < _HI) if exact else np.zeros(n, bool)
  zero = a == 0
  af = np.where(fast, a, 1.0)  # other rows are written below; 1.0 keeps their arithmetic quiet
  e = np.floor(np.log10(af)).astype(np.int64)
  m = np.rint(af * _POW10[_DIGITS - 1 - e])
  for _ in range(2):  # log10 is off by one at most, near powers of ten
    up, down = m >= 10.0**_DIGITS, m < 10.0 ** (_DIGITS - 1)
    if not (up.any() or down.any()):
      break
    e = e + up - down
    m = np.where(up | down, np.rint(af * _POW10[_DIGITS - 1 - e]), m)
  hi, lo = np.divmod(m.astype(np.int32), np.int32(1000))  # 1000..9999 and 000..999
  chars[:] = _TEMPLATE
  chars[:, 6:14:2] = _QUADS[hi]  # d0..d3 (_DIGIT_COLS)
  chars[:, 14:19:2] = _QUADS[lo][:, 1:]  # d4..d6
  tz = _TZ3[lo] + np.where(lo == 0, _TZ4[hi], 0)
  keep[:] = _KEEP[np.where(fast, (e + 6) * _DIGITS + tz, len(_KEEP) - 1)]
  keep[:, 0] = np.signbit(v64) & (fast | zero)
  chars[zero, 1], keep[zero, 1] = ord("0"), True
  slow = np.flatnonzero(~(fast | zero))
  if slow.size:
    strings = ["%.7g" % x for x in v64[slow].tolist()]  # noqa: UP031 (the reference format)
    w = max(len(s) for s in strings)
    chars[slow, :w] = np.array([s.encode() for s in strings], f"S{w}").view(np.uint8).reshape(-1, w)
    lens = np.array([len(s) for s in strings])
    keep[slow] = np.arange(FLOAT_WIDTH) < lens[:, None]


def csv_block(ids: np.ndarray, values: list[np.ndarray]) -> bytes:
  """The CSV lines `id,v1,...,vk\\r\\n` of a block of rows, byte for byte what `csv.writer` writes
  for `[int(id), *('%.7g' % v for v in row)]`."""
  n = len(ids)
  for v in values:
    if len(v) != n:
      raise ValueError(f"csv_block: a column has {len(v)} rows, the ids {n}")
  if n == 0:
    return b""
  iw = int_width(ids)
  width = iw + len(values) * (1 + FLOAT_WIDTH) + len(CSV_ROW_END)
  chars = np.empty((n, width), np.uint8)
  keep = np.empty((n, width), bool)
  int_into(chars[:, :iw], keep[:, :iw], ids)
  at = iw
  for v in values:
    chars[:, at], keep[:, at] = ord(","), True
    float_into(chars[:, at + 1 : at + 1 + FLOAT_WIDTH], keep[:, at + 1 : at + 1 + FLOAT_WIDTH], v)
    at += 1 + FLOAT_WIDTH
  chars[:, at:] = np.frombuffer(CSV_ROW_END, np.uint8)
  keep[:, at:] = True
  # np.compress on the flat arrays: several times faster than boolean indexing (measured).
  return np.compress(keep.ravel(), chars.ravel()).tobytes()


def write_csv(f, names: list[str], ids: np.ndarray, values: list[np.ndarray], block: int = 16_384):
  """Writes the header `sample_id,<names>` and every row to the binary file `f`, `block` rows at a
  time (the formatting's scratch memory is a few hundred bytes per row of a block)."""
  f.write(",".join(["sample_id", *names]).encode() + CSV_ROW_END)
  for s in range(0, len(ids), block):
    f.write(csv_block(ids[s : s + block], [v[s : s + block] for v in values]))


def write_parquet(f, names: list[str], ids: np.ndarray, values: list[np.ndarray]):
  """Writes `sample_id` (int64) and the predictions (float32) as zstd Parquet to `f` (a path or a
  binary file), one row group per ~1 M rows."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  table = pa.table(
    {
      "sample_id": np.asarray(ids, np.int64),
      **{k: np.asarray(v, np.float32) for k, v in zip(names, values, strict=True)},
    }
  )
  pq.write_table(table, f, compression="zstd", row_group_size=1 << 20)
