"""The grain input pipeline: blocks on disk -> shuffled, re-batched, per-process numpy batches.

Order of operations: random-access source of blocks (`dataset.BlockSource`) -> per-epoch seeded
shuffle of blocks (`block_order`) -> split by process (`[process_index::process_count]`) -> row
shuffle inside a window of blocks -> re-batch to the per-process batch -> prefetch in a thread.

The iterator's state is two integers (window index, rows already emitted from it): the block order
and each window's row permutation are pure functions of (seed, epoch, window), so restoring the
state replays exactly the same batches — that is what makes resumption exact.

Speed (benchmarks/data_throughput.py; ~0.15 µs of CPU a row at 706 bytes a row): per row, one copy
into the window (a reused buffer) and one gather into the batch (reused buffers, `np.take` with
`out=`); per block, a list lookup, a cached header and its checksum (verified one window ahead,
in a thread of its own); per epoch, one vectorised block shuffle (grain's, computed for all blocks
at once). Worker processes would not help on a few cores: a batch
handed over from another process costs a further copy and pickling, more CPU than making it here.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from esmjax.data.format import dataset as ds_lib
from esmjax.data.pipeline import order as order_lib


def block_dataset(dataset: ds_lib.Dataset, **kw) -> grain.MapDataset:
  """The blocks of `block_order(dataset, **kw)`, decoded: a MapDataset of blocks."""
  return order_lib.block_order(dataset, **kw).map(ds_lib.BlockSource(dataset).__getitem__)


class _BatchBuffers:
  """Memory for batches, reused once nothing holds a batch any more.

  Why: a fresh multi-MB batch is memory the kernel faults in and zeroes page by page (glibc returns
  freed chunks that size to it), which cost twice the gather itself. A slot is one flat buffer and
  a batch's columns are views of it, so the buffer's reference count tells whether anything still
  holds the batch: the consumer, the prefetch queue, an in-flight `jax.device_put`. At most `keep`
  slots are kept; when all are held, a batch gets fresh memory.
  """

  def __init__(self, like: dict[str, np.ndarray], rows: int, keep: int):
    self._rows, self._keep, self._layout, off = rows, keep, [], 0
    for k, v in like.items():
      off += (-off) % 64
      size = rows * v.dtype.itemsize * int(np.prod(v.shape[1:]))
      self._layout.append((k, v.dtype, v.shape[1:], off, size))
      off += size
    self._nbytes = off
    self._slots: list[np.ndarray] = []
    probe = [np.empty(0)]
    self._idle_refs = sys.getrefcount(probe[0])  # a slot's refs when only the list holds it

  def new_batch(self) -> dict[str, np.ndarray]:
    buf = self._free_slot()
    return {
      k: buf[off : off + size].view(dt).reshape((self._rows,) + shape)
      for k, dt, shape, off, size in self._layout
    }

  def _free_slot(self) -> np.ndarray:
    for i in range(len(self._slots)):
      if sys.getrefcount(self._slots[i]) <= self._idle_refs:
        return self._slots[i]
    buf = np.empty(self._nbytes, np.uint8)
    if len(self._slots) < self._keep:
      self._slots.append(buf)
    return buf


_CHECKER: list = []
_CHECKER_LOCK = threading.Lock()


def _checker():
  """The one thread that verifies blocks ahead of their window, shared by all iterators (a thread
  per iterator would leave one behind for every evaluation that is not closed)."""
  with _CHECKER_LOCK:
    if not _CHECKER:
      from concurrent.futures import ThreadPoolExecutor

      _CHECKER.append(ThreadPoolExecutor(1, thread_name_prefix="esmjax-verify"))
    return _CHECKER[0]


class _RebatchIterator(grain.DatasetIterator):
  """Window row-shuffle + re-batch over blocks in `order`, with exact (window, offset) state.

  Window w is blocks `order[w * window_blocks : (w + 1) * window_blocks]`, its rows concatenated
  and permuted by `default_rng([seed, w])`; batches are consecutive runs of those permuted rows
  (a batch may span windows). Copies per row: one into the window, one into the batch; with
  `threads` > 1 both are split by rows over that many threads (numpy releases the GIL).

  With `verify`, every block is checked (`BlockSource.verify`: its checksum) before any of its rows
  is used. The checks of window w + 1 run on the verify thread (`_checker`) while window w is being
  read (NumPy's sums release the GIL), so with a spare core they cost no time on this path.
  """

  def __init__(
    self,
    order: Sequence[int],
    source: ds_lib.BlockSource,
    *,
    batch_size: int,
    window_blocks: int,
    seed: int,
    shuffle_rows: bool,
    drop_remainder: bool,
    threads: int = 1,
    keep_buffers: int = 8,
    verify: bool = True,
  ):
    super().__init__()
    self._order, self._source = order, source
    self._bs, self._w = batch_size, window_blocks
    self._seed, self._shuffle, self._drop = seed, shuffle_rows, drop_remainder
    self._n_blocks = len(order)
    self._window, self._offset = 0, 0
    self._cache: tuple[int, Any] = (-1, None)
    self._window_buf: dict[str, np.ndarray] | None = None  # reused: each window overwrites the last
    self._batches: _BatchBuffers | None = None
    self._keep = keep_buffers
    self._threads = max(1, int(threads))
    self._pool = None
    self._verify = verify
    self._checks: dict[int, Any] = {}  # window -> the future of its verification

  def _run(self, fn, parts) -> None:
    """fn(part) for every part, on `threads` threads when there is more than one part."""
    if self._threads == 1 or len(parts) < 2:
      for p in parts:
        fn(p)
      return
    if self._pool is None:
      from concurrent.futures import ThreadPoolExecutor

      self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="esmjax-gather")
    for _ in self._pool.map(fn, parts):
      pass

  def _splits(self, n: int) -> list[tuple[int, int]]:
    """[0, n) in `threads` contiguous pieces (fewer for small n: a thread hand-off costs ~20 µs)."""
    k = max(1, min(self._threads, n // 512))
    edges = [n * i // k for i in range(k + 1)]
    return list(itertools.pairwise(edges))

  def _window_blocks(self, w: int) -> list[int]:
    lo = w * self._w
    return [self._order[i] for i in range(lo, min(lo + self._w, self._n_blocks))]

  def _verify_blocks(self, indices: list[int]) -> None:
    for i in indices:
      self._source.verify(i)

  def _verified(self, w: int, indices: list[int]) -> None:
    """Returns once window w's blocks are verified (raising what the check raised), and starts the
    check of window w + 1."""
    ahead = self._checks.pop(w, None)
    if ahead is None:
      self._verify_blocks(indices)
    else:
      ahead.result()
    nxt = self._window_blocks(w + 1)
    if nxt:
      self._checks = {w + 1: _checker().submit(self._verify_blocks, nxt)}

  def _load_window(self, w: int):
    if self._cache[0] == w:
      return self._cache[1]
    indices = self._window_blocks(w)
    if not indices:
      window = None
    else:
      if self._verify:
        self._verified(w, indices)
      blocks = [self._source.read(i, verify=False) for i in indices]
      data = self._concat(blocks) if len(blocks) > 1 else blocks[0]
      # The permutation is applied lazily, one batch's rows at a time (one copy, not two).
      perm = (
        np.random.default_rng([self._seed, w]).permutation(len(data["user"]))
        if self._shuffle
        else None
      )
      window = (data, perm)
    self._cache = (w, window)
    return window

  def _concat(self, blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The blocks' rows in one reused buffer (the window never escapes: batches are copies)."""
    sizes = [len(b["user"]) for b in blocks]
    n = sum(sizes)
    buf = self._window_buf
    if buf is None or len(buf["user"]) < n:
      buf = self._window_buf = {
        k: np.empty((n,) + v.shape[1:], v.dtype) for k, v in blocks[0].items()
      }
    data = {k: v[:n] for k, v in buf.items()}
    starts = np.cumsum([0] + sizes).tolist()

    def copy(part):
      lo, hi = part
      for i in range(len(blocks)):
        a, b = max(starts[i], lo), min(starts[i + 1], hi)
        if a < b:
          for k, v in data.items():
            v[a:b] = blocks[i][k][a - starts[i] : b - starts[i]]

    self._run(copy, self._splits(n))
    return data

  def _gather(
    self, out: dict[str, np.ndarray], at: int, data: dict[str, np.ndarray], rows: slice, perm
  ) -> None:
    """out[at : at + len(rows)] = the window's rows `rows` (through the permutation, if any)."""
    idx = perm[rows] if perm is not None else None

    def copy(part):
      lo, hi = part
      dst = slice(at + lo, at + hi)
      if idx is None:
        for k, v in data.items():
          out[k][dst] = v[rows.start + lo : rows.start + hi]
      else:
        # mode="clip" because take's default ("raise") copies through a temporary whenever `out`
        # is given; the indices are a permutation of the window's rows, never out of range.
        sub = idx[lo:hi]
        for k, v in data.items():
          np.take(v, sub, axis=0, out=out[k][dst], mode="clip")

    self._run(copy, self._splits(rows.stop - rows.start))

  def __next__(self) -> dict[str, np.ndarray]:
    out, filled = None, 0
    while filled < self._bs:
      window = self._load_window(self._window)
      if window is None:
        break
      data, perm = window
      n = len(data["user"])
      take = min(self._bs - filled, n - self._offset)
      if take > 0:
        if out is None:
          if self._batches is None:
            self._batches = _BatchBuffers(data, self._bs, self._keep)
          out = self._batches.new_batch()
        self._gather(out, filled, data, slice(self._offset, self._offset + take), perm)
        self._offset += take
        filled += take
      if self._offset >= n:
        self._window, self._offset = self._window + 1, 0
    if not filled or (filled < self._bs and self._drop):
      raise StopIteration
    return out if filled == self._bs else {k: v[:filled] for k, v in out.items()}

  def get_state(self) -> dict[str, Any]:
    return {"window": int(self._window), "offset": int(self._offset)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._window, self._offset = int(state["window"]), int(state["offset"])

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=False)
      self._pool = None
    for ahead in self._checks.values():
      ahead.cancel()
    self._checks = {}
    super().close()


class RebatchIterDataset(grain.IterDataset):
  def __init__(self, order: Sequence[int], source: ds_lib.BlockSource, **kw):
    super().__init__()
    self._order, self._source, self._kw = order, source, kw

  def __iter__(self) -> _RebatchIterator:
    return _RebatchIterator(self._order, self._source, **self._kw)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  batch_size: int  # per-process rows per batch
  seed: int = 0
  shuffle: bool = True
  window_blocks: int = 8  # blocks whose rows are shuffled together
  num_epochs: int | None = None  # None: repeat forever (training by steps)
  prefetch: int = 2  # batches prepared ahead in a background thread (0: none)
  drop_remainder: bool = True
  fraction: float = 1.0  # leading fraction of the blocks to use (data-sparsity experiments)
  threads: int = 1  # threads that copy rows into windows and batches (same batches for any number)
  verify: bool = True  # check every block read against its checksum (off: benchmarks only)


def train_iter_dataset(
  dataset: ds_lib.Dataset, cfg: PipelineConfig, *, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
  order = order_lib.BlockOrder(
    dataset,
    seed=cfg.seed,
    shuffle=cfg.shuffle,
    num_epochs=cfg.num_epochs,
    process_index=process_index,
    process_count=process_count,
    fraction=cfg.fraction,
  )
  # Batch buffers in use at once: the prefetch queue, the one being filled, the consumer's and the
  # few that asynchronous device transfers may still hold.
  it = RebatchIterDataset(
    order,
    ds_lib.BlockSource(dataset),
    batch_size=cfg.batch_size,
    window_blocks=cfg.window_blocks,
    seed=cfg.seed,
    shuffle_rows=cfg.shuffle,
    drop_remainder=cfg.drop_remainder,
    threads=cfg.threads,
    keep_buffers=cfg.prefetch + 6,
    verify=cfg.verify,
  )
  if cfg.prefetch:
    it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=cfg.prefetch)
  return it


def eval_batches(
  dataset: ds_lib.Dataset, batch_size: int, *, process_index: int = 0, process_count: int = 1
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """Every row once, in file order (this process's blocks), as full batches padded with PAD rows.

  Yields (batch, n_valid): rows past n_valid are padding and must be masked out. Processes get
  the same number of batches (padding-only batches where one has fewer rows), so collective
  evaluation steps stay in lock-step.
  """
  src = ds_lib.BlockSource(dataset)
  mine = list(range(process_index, len(src), process_count))
  total_rows = [0] * process_count
  per_block = _block_rows(dataset)
  for i, n in enumerate(per_block):
    total_rows[i % process_count] += n
  n_batches = max(-(-r // batch_size) for r in total_rows)
  it = RebatchIterDataset(
    grain.MapDataset.range(len(src))[process_index::process_count],
    src,
    batch_size=batch_size,
    window_blocks=4,
    seed=0,
    shuffle_rows=False,
    drop_remainder=False,
  )
  it = iter(it) if mine else iter(())
  for _ in range(n_batches):
    b = next(it, None)
    if b is None:
      b = ds_lib.empty_block(dataset.schema, 0)
    n = len(b["user"])
    if n < batch_size:
      b = ds_lib.concat_blocks([b, ds_lib.empty_block(dataset.schema, batch_size - n)])
    yield b, n


def _block_rows(dataset: ds_lib.Dataset) -> list[int]:
  """Rows per block in source order, from the shard entries of the manifest."""
  return [int(n) for s in dataset.manifest["shards"] for n in s["block_sizes"]]


def eval_row_index(
  dataset: ds_lib.Dataset, *, process_index: int = 0, process_count: int = 1
) -> np.ndarray:
  """The file-order index of each valid row `eval_batches` yields to this process, in the order
  it yields them: the rows of blocks process_index, process_index + process_count, ... Sorting
  the rows that all processes scored by it restores the file's order."""
  sizes = _block_rows(dataset)
  starts = np.cumsum([0, *sizes])
  mine = [
    np.arange(starts[b], starts[b + 1]) for b in range(process_index, len(sizes), process_count)
  ]
  return np.concatenate(mine) if mine else np.zeros((0,), np.int64)
