"""Id mapping: raw feature ids -> embedding row ids, with PAD = 0 and OOV = 1 reserved.

Two mappings, chosen per field:

- `hash`: a deterministic 64-bit hash (splitmix64's finaliser, salted per field) of the raw id
  into `buckets` slots, shifted to `[2, buckets + 2)`. Streams in one pass, needs no shared state
  between converter workers or between the train and test conversions, and keeps memory bounded:
  what the Ali-CCP converter uses. Collisions are the price; size buckets to the field.
- `vocab`: a vocabulary built in a first pass (values seen at least `min_count` times, most
  frequent first), ids `[2, 2 + len(vocab))`, everything else OOV. Collision-free; needs the
  first pass and must be reused for the test split (`Vocab.to_json` / `from_json`).

Raw ids are int64 keys: numeric tokens are their value; other strings (Ali-CCP's
`common_feature_index`, categorical CSV cells) go through `bytes_keys`, a 64-bit hash of the bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from esmjax.common.schema import OOV, PAD

NUM_RESERVED = 2  # PAD and OOV
MAPPINGS = ("hash", "vocab")

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's mixer on uint64 (wrapping arithmetic), vectorised; a bijection of 64-bit words."""
  z = np.asarray(x).astype(np.uint64, copy=True)
  with np.errstate(over="ignore"):
    z += _GOLDEN
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
  return z


def field_salt(name: str) -> np.uint64:
  """A stable per-field salt (independent of Python's randomised `hash`)."""
  return np.uint64(int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little"))


def hash_ids(keys: np.ndarray, salt: np.uint64 | int, buckets: int) -> np.ndarray:
  """int64 raw keys -> int32 ids in [2, buckets + 2)."""
  if buckets < 1:
    raise ValueError(f"hash buckets must be >= 1, got {buckets}")
  if buckets + NUM_RESERVED > np.iinfo(np.int32).max:
    raise ValueError(f"hash buckets {buckets} do not fit int32 ids")
  k = np.asarray(keys).astype(np.int64, copy=False).view(np.uint64)
  h = splitmix64(k ^ np.uint64(salt))
  return (h % np.uint64(buckets)).astype(np.int32) + np.int32(NUM_RESERVED)


def bytes_keys(mat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Rows of a zero-padded uint8 matrix [n, W] (token bytes, `lengths` used) -> int64 keys.

  Words of 8 bytes are folded through splitmix64 together with the length, so distinct strings
  collide with probability ~n²/2⁶⁵ (730 k keys: ~1e-8).
  """
  n, w = mat.shape
  pad = (-w) % 8
  if pad:
    mat = np.concatenate([mat, np.zeros((n, pad), np.uint8)], axis=1)
  words = np.ascontiguousarray(mat).view(np.uint64).reshape(n, -1)
  lengths = np.asarray(lengths, np.int64)
  h = splitmix64(lengths.astype(np.uint64) ^ np.uint64(0x5BD1E995))
  # Each token folds its own words only (at least one), so its key does not depend on the widest
  # token beside it: the same string has the same key in every batch and every vocabulary.
  own = np.maximum((lengths + 7) // 8, 1)
  for j in range(words.shape[1]):
    h = np.where(j < own, splitmix64(h ^ words[:, j]), h)
  return h.view(np.int64)


# Token bytes gathered at once: tokens are keyed in groups of similar length whose padded matrix
# stays under this, so memory follows the number of tokens, not tokens x the longest one.
GATHER_BYTES = 1 << 24


def _by_length(data, starts, lengths, keys_of) -> np.ndarray:
  """keys_of(zero-padded token matrix [m, w], lengths [m]) over groups of tokens sorted by length,
  each group's matrix at most GATHER_BYTES (or one token)."""
  starts = np.asarray(starts, np.int64)
  lengths = np.maximum(np.asarray(lengths, np.int64), 0)
  n = len(starts)
  out = np.zeros((n,), np.int64)
  if not n:
    return out
  order = np.argsort(lengths, kind="stable")
  sorted_w = np.maximum(lengths[order], 1)
  data = np.asarray(data, np.uint8)
  i = 0
  while i < n:
    # The longest group [i, j) whose matrix (j - i) x its widest token fits (at least one token);
    # sizes grow with j, so a binary search finds j.
    lo, hi = i + 1, n
    while lo < hi:
      mid = (lo + hi + 1) // 2
      if (mid - i) * int(sorted_w[mid - 1]) <= GATHER_BYTES:
        lo = mid
      else:
        hi = mid - 1
    j, w = lo, int(sorted_w[lo - 1])
    idx = order[i:j]
    padded = np.concatenate([data, np.zeros(w, np.uint8)])
    mat = np.lib.stride_tricks.sliding_window_view(padded, w)[starts[idx]]
    mat = (mat * (np.arange(w) < lengths[idx, None])).astype(np.uint8, copy=False)
    out[idx] = keys_of(mat, lengths[idx])
    i = j
  return out


def token_keys(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Tokens data[starts[i] : starts[i] + lengths[i]] of a uint8 buffer -> int64 keys
  (`bytes_keys`), in memory bounded by the token count (`GATHER_BYTES`)."""
  return _by_length(data, starts, lengths, bytes_keys)


def numeric_or_bytes_keys(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Tokens -> int64 keys: plain decimal integers (up to 18 digits, optional '-') are their value,
  so hashed ids match the Ali-CCP converter's; anything else is `bytes_keys` of the text. Memory
  as `token_keys`."""
  return _by_length(data, starts, lengths, _numeric_or_bytes)


def _numeric_or_bytes(mat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  n, c = mat.shape[0], min(mat.shape[1], 19)  # a numeric token has at most '-' and 18 digits
  head = mat[:, :c]
  neg = (head[:, 0] == 45) & (lengths > 1)
  body_len = lengths - neg
  j = np.arange(c)
  act = (j >= neg[:, None]) & (j < lengths[:, None])
  dig = (head >= 48) & (head <= 57)
  numeric = (lengths > 0) & (lengths <= c) & (body_len <= 18) & (dig | ~act).all(1)
  val = np.zeros(n, np.int64)
  for k in range(c):
    a = act[:, k] & numeric
    val = np.where(a, val * 10 + (head[:, k].astype(np.int64) - 48), val)
  val = np.where(neg, -val, val)
  other = ~numeric
  if other.any():
    val[other] = bytes_keys(mat[other], lengths[other])
  return val


def str_keys(values: Sequence[str | bytes]) -> np.ndarray:
  """Python strings -> int64 keys, identical to `bytes_keys` on their UTF-8 bytes."""
  bs = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
  if not bs:
    return np.zeros((0,), np.int64)
  w = max(1, max(len(b) for b in bs))
  mat = np.zeros((len(bs), w), np.uint8)
  for i, b in enumerate(bs):
    mat[i, : len(b)] = np.frombuffer(b, np.uint8)
  return bytes_keys(mat, np.array([len(b) for b in bs]))


@dataclasses.dataclass
class Vocab:
  """A frequency-thresholded vocabulary of raw values (strings) -> ids; PAD 0, OOV 1."""

  values: list[str]  # id = NUM_RESERVED + position

  @property
  def size(self) -> int:
    return NUM_RESERVED + len(self.values)

  @classmethod
  def from_counts(
    cls, counts: dict[str, int], min_count: int = 1, max_size: int | None = None
  ) -> Vocab:
    if not counts:
      return cls([])
    vals = np.array(list(counts.keys()), dtype=object)
    cnts = np.fromiter(counts.values(), np.int64, len(counts))
    keep = cnts >= min_count
    vals, cnts = vals[keep], cnts[keep]
    order = np.lexsort((vals.astype(str), -cnts))  # most frequent first, ties by value
    if max_size is not None:
      order = order[: max(0, max_size - NUM_RESERVED)]
    return cls(vals[order].tolist())

  def lookup(self, values: Iterable[str]) -> np.ndarray:
    index = {v: i + NUM_RESERVED for i, v in enumerate(self.values)}
    return np.array([index.get(v, OOV) for v in values], np.int32)

  def to_json(self) -> dict[str, Any]:
    return {"values": self.values}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> Vocab:
    return cls(list(d["values"]))


def check_mapping(key: str, value: str) -> str:
  if value not in MAPPINGS:
    raise ValueError(f"{key}={value!r}: unknown id mapping; allowed: {list(MAPPINGS)}")
  return value


__all__ = [
  "PAD",
  "OOV",
  "NUM_RESERVED",
  "MAPPINGS",
  "splitmix64",
  "field_salt",
  "hash_ids",
  "bytes_keys",
  "token_keys",
  "numeric_or_bytes_keys",
  "str_keys",
  "Vocab",
  "check_mapping",
]
