"""The order blocks are read in: per epoch, a seeded shuffle of the blocks (grain's), this process's
share, repeated for the epochs; `BlockOrder` computes each epoch's permutation at once.
"""

from __future__ import annotations

import math

import grain
import numpy as np

from esmjax.data.format import dataset as ds_lib


def block_order(
  dataset: ds_lib.Dataset,
  *,
  seed: int,
  shuffle: bool,
  num_epochs: int | None,
  process_index: int = 0,
  process_count: int = 1,
  fraction: float = 1.0,
) -> grain.MapDataset:
  """Block indices in reading order: the leading `fraction` of the blocks, shuffled per epoch, this
  process's share, repeated.

  Indices rather than blocks: grain's per-element bookkeeping around a source costs as much as
  decoding the block; the iterator reads the blocks from a `dataset.BlockSource` itself.
  """
  mds = grain.MapDataset.range(dataset.num_blocks)
  if fraction < 1.0:
    mds = mds[: max(1, int(round(len(mds) * fraction)))]
  if shuffle:
    mds = mds.shuffle(seed=seed)
  mds = mds[process_index::process_count]
  if len(mds) == 0:
    raise ds_lib.DatasetError(
      f"{dataset.directory}: {dataset.num_blocks} block(s) cannot feed {process_count} processes"
    )
  return mds.repeat(num_epochs)


class BlockOrder:
  """`block_order(...)[j]`, the same indices, with each epoch's shuffle computed at once.

  grain computes a shuffled index per call by cycle-walking a 16+ bit cipher into [0, blocks): on a
  dataset of a few hundred blocks that is hundreds of cipher steps, 50-400 µs a block, as much as
  copying its rows. `grain_shuffle` is the same permutation for all indices in ~5 ms. Each epoch's
  first and last index are checked against grain's own; on a mismatch (a grain that shuffles
  differently) the order falls back to grain's, index by index.
  """

  def __init__(
    self,
    dataset: ds_lib.Dataset,
    *,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    process_index: int = 0,
    process_count: int = 1,
    fraction: float = 1.0,
  ):
    self._ref = block_order(
      dataset,
      seed=seed,
      shuffle=shuffle,
      num_epochs=num_epochs,
      process_index=process_index,
      process_count=process_count,
      fraction=fraction,
    )
    n = dataset.num_blocks
    self._blocks = max(1, int(round(n * fraction))) if fraction < 1.0 else n
    self._mine = len(range(process_index, self._blocks, process_count))
    self._pi, self._pc, self._seed, self._shuffle = process_index, process_count, seed, shuffle
    self._epoch, self._perm, self._use_ref = -1, None, False

  def __len__(self) -> int:
    return len(self._ref)

  def __getitem__(self, j: int) -> int:
    if self._use_ref:
      return int(self._ref[j])
    epoch, rel = divmod(int(j), self._mine)
    pos = self._pi + rel * self._pc  # the slice [pi::pc] of this epoch's shuffled blocks
    if not self._shuffle:
      return pos
    if epoch != self._epoch:
      self._perm, self._epoch = grain_shuffle(self._blocks, (self._seed + epoch) % 2**32), epoch
      first, last = epoch * self._mine, (epoch + 1) * self._mine - 1
      if any(int(self._ref[i]) != self[i] for i in (first, last)):
        self._use_ref = True
    return int(self._ref[j]) if self._use_ref else int(self._perm[pos])


def grain_shuffle(length: int, seed: int, rounds: int = 4) -> np.ndarray:
  """[grain index_shuffle(i, max_index=length - 1, seed, rounds) for i in range(length)],
  vectorised.

  grain's cipher (index_shuffle.cc): blocks of B = max(16, ceil(log2(max_index)) rounded up to even)
  bits, a Simon-like Feistel on two B/2-bit words with round keys from std::seed_seq{seed}, applied
  repeatedly until the value falls in [0, length) (cycle walking). Here: the cipher on all 2^B
  values at once, then each value's first in-range successor by pointer doubling (or, when most
  values are in range, the few walks step by step).
  """
  if length <= 1:
    return np.zeros(length, np.int64)
  bits = math.ceil(math.log2(length - 1))
  bits = max(bits + bits % 2, 16)
  w = np.uint64(bits // 2)
  mask = np.uint64((1 << (bits // 2)) - 1)
  keys = [np.uint64(k) & mask for k in seed_seq(seed, rounds)]
  rotl = lambda x, r: ((x << np.uint64(r)) | (x >> (w - np.uint64(r)))) & mask
  f = lambda x: (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)

  def encrypt(x):
    left, right = (x >> w) & mask, x & mask
    for i in range(0, rounds, 2):
      left ^= f(right) ^ keys[i]
      right ^= f(left) ^ keys[i + 1]
    return ((left << w) | right).astype(np.int64)

  first = encrypt(np.arange(length, dtype=np.uint64))
  if 4 * length > 1 << bits:  # over a quarter of the values in range: short walks, step by step
    pending = np.flatnonzero(first >= length)
    while pending.size:
      first[pending] = encrypt(first[pending].astype(np.uint64))
      pending = pending[first[pending] >= length]
    return first
  values = np.arange(1 << bits, dtype=np.int64)  # B = 16 here: a larger B has most values in range
  nxt = encrypt(values.astype(np.uint64))
  found = np.where(values < length, values, -1)  # the first in-range value at or after each value
  pending = np.flatnonzero(found < 0)
  # nxt spans 2^i steps after i rounds; cycles with no in-range value never resolve.
  for _ in range(bits + 2):
    if not pending.size:
      break
    hit = found[nxt[pending]]
    done = hit >= 0
    found[pending[done]] = hit[done]
    pending = pending[~done]
    nxt[pending] = nxt[nxt[pending]]
  return found[first]


def seed_seq(seed: int, n: int) -> list[int]:
  """C++ `std::seed_seq{seed}.generate(n words)` (the standard's [rand.util.seedseq] algorithm)."""
  m32, v = 0xFFFFFFFF, [seed & 0xFFFFFFFF]
  s, b = len(v), [0x8B8B8B8B] * n
  t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
  p = (n - t) // 2
  q, m = p + t, max(s + 1, n)
  mix = lambda x: x ^ (x >> 27)
  for k in range(m):
    r1 = 1664525 * mix(b[k % n] ^ b[(k + p) % n] ^ b[(k - 1) % n]) & m32
    r2 = (r1 + (s if k == 0 else k % n + v[k - 1] if k <= s else k % n)) & m32
    b[(k + p) % n] = (b[(k + p) % n] + r1) & m32
    b[(k + q) % n] = (b[(k + q) % n] + r2) & m32
    b[k % n] = r2
  for k in range(m, m + n):
    r3 = 1566083941 * mix((b[k % n] + b[(k + p) % n] + b[(k - 1) % n]) & m32) & m32
    r4 = (r3 - k % n) & m32
    b[(k + p) % n] ^= r3
    b[(k + q) % n] ^= r4
    b[k % n] = r4
  return b
