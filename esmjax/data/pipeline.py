"""The grain input pipeline: blocks on disk -> shuffled, re-batched, per-process numpy batches.

Order of operations (DESIGN.md §3): random-access source of blocks -> per-epoch seeded shuffle of
blocks -> split by process (`[process_index::process_count]`) -> row shuffle inside a window of
blocks -> re-batch to the per-process batch -> prefetch in a thread.

The iterator's state is two integers (window index, rows already emitted from it): the block order
and each window's row permutation are pure functions of (seed, epoch, window), so restoring the state
replays exactly the same batches — that is what makes resumption exact.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import grain
import numpy as np

from esmjax.data import dataset as ds_lib


class BlockSource(grain.sources.RandomAccessDataSource if hasattr(grain, "sources") else object):
  """Random access to the decoded blocks of a dataset, across all its shards."""

  def __init__(self, dataset: ds_lib.Dataset):
    self._dataset = dataset
    self._readers = [ds_lib.ShardReader(p) for p in dataset.shard_paths]
    counts = [int(s["num_blocks"]) for s in dataset.manifest["shards"]]
    self._starts = np.cumsum([0] + counts)

  def __len__(self) -> int:
    return self._dataset.num_blocks

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    shard = int(np.searchsorted(self._starts, index, side="right")) - 1
    return self._readers[shard][index - int(self._starts[shard])]

  def __repr__(self):
    return f"BlockSource({self._dataset.directory!r}, blocks={len(self)})"


def block_dataset(dataset: ds_lib.Dataset, *, seed: int, shuffle: bool, num_epochs: int | None,
                  process_index: int = 0, process_count: int = 1, fraction: float = 1.0) -> grain.MapDataset:
  """Blocks (the leading `fraction` of them), shuffled per epoch, this process's share, repeated."""
  mds = grain.MapDataset.source(BlockSource(dataset))
  if fraction < 1.0:
    mds = mds[:max(1, int(round(len(mds) * fraction)))]
  if shuffle:
    mds = mds.shuffle(seed=seed)
  mds = mds[process_index::process_count]
  if len(mds) == 0:
    raise ds_lib.DatasetError(
        f"{dataset.directory}: {dataset.num_blocks} block(s) cannot feed {process_count} processes")
  return mds.repeat(num_epochs)


class _RebatchIterator(grain.DatasetIterator):
  """Window row-shuffle + re-batch over a MapDataset of blocks, with exact (window, offset) state."""

  def __init__(self, blocks: grain.MapDataset, *, batch_size: int, window_blocks: int, seed: int,
               shuffle_rows: bool, drop_remainder: bool):
    super().__init__()
    self._blocks, self._bs, self._w = blocks, batch_size, window_blocks
    self._seed, self._shuffle, self._drop = seed, shuffle_rows, drop_remainder
    self._n_blocks = len(blocks)
    self._window, self._offset = 0, 0
    self._cache: tuple[int, dict[str, np.ndarray] | None] = (-1, None)

  def _load_window(self, w: int):
    if self._cache[0] == w:
      return self._cache[1]
    lo = w * self._w
    hi = min(lo + self._w, self._n_blocks)
    if lo >= hi:
      data = None
    else:
      blocks = [self._blocks[i] for i in range(lo, hi)]
      data = ds_lib.concat_blocks(blocks) if len(blocks) > 1 else blocks[0]
      # The permutation is applied lazily, one batch's rows at a time (one copy, not two).
      perm = (np.random.default_rng([self._seed, w]).permutation(len(data["user"]))
              if self._shuffle else None)
      data = (data, perm)
    self._cache = (w, data)
    return data

  def __next__(self) -> dict[str, np.ndarray]:
    parts, need = [], self._bs
    while need:
      window = self._load_window(self._window)
      if window is None:
        break
      data, perm = window
      n = len(data["user"])
      take = min(need, n - self._offset)
      if take > 0:
        rows = slice(self._offset, self._offset + take)
        if perm is None:
          parts.append({k: np.array(v[rows]) for k, v in data.items()})
        else:
          idx = perm[rows]
          parts.append({k: np.take(v, idx, axis=0) for k, v in data.items()})
        self._offset += take
        need -= take
      if self._offset >= n:
        self._window, self._offset = self._window + 1, 0
    if not parts or (need and self._drop):
      raise StopIteration
    return parts[0] if len(parts) == 1 else ds_lib.concat_blocks(parts)

  def get_state(self) -> dict[str, Any]:
    return {"window": int(self._window), "offset": int(self._offset)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._window, self._offset = int(state["window"]), int(state["offset"])


class RebatchIterDataset(grain.IterDataset):
  def __init__(self, blocks: grain.MapDataset, **kw):
    super().__init__()
    self._blocks, self._kw = blocks, kw

  def __iter__(self) -> _RebatchIterator:
    return _RebatchIterator(self._blocks, **self._kw)


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


def train_iter_dataset(dataset: ds_lib.Dataset, cfg: PipelineConfig, *, process_index: int = 0,
                       process_count: int = 1) -> grain.IterDataset:
  blocks = block_dataset(dataset, seed=cfg.seed, shuffle=cfg.shuffle, num_epochs=cfg.num_epochs,
                         process_index=process_index, process_count=process_count, fraction=cfg.fraction)
  it = RebatchIterDataset(blocks, batch_size=cfg.batch_size, window_blocks=cfg.window_blocks,
                          seed=cfg.seed, shuffle_rows=cfg.shuffle, drop_remainder=cfg.drop_remainder)
  if cfg.prefetch:
    it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=cfg.prefetch)
  return it


def eval_batches(dataset: ds_lib.Dataset, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """Every row once, in file order (this process's blocks), as full batches padded with PAD rows.

  Yields (batch, n_valid): rows past n_valid are padding and must be masked out. Processes get
  the same number of batches (padding-only batches where one has fewer rows), so collective
  evaluation steps stay in lock-step.
  """
  src = BlockSource(dataset)
  mine = list(range(process_index, len(src), process_count))
  total_rows = [0] * process_count
  per_block = _block_rows(dataset)
  for i, n in enumerate(per_block):
    total_rows[i % process_count] += n
  n_batches = max(-(-r // batch_size) for r in total_rows)
  it = RebatchIterDataset(grain.MapDataset.source(src)[process_index::process_count],
                          batch_size=batch_size, window_blocks=4, seed=0, shuffle_rows=False,
                          drop_remainder=False)
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
