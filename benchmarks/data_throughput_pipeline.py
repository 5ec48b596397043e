"""benchmarks/data_throughput.py's pipeline part: rows/s of batches from the converted dataset
(the trainer's pipeline, and an equivalent window pipeline under grain worker processes), measured
round-robin, and the GB/s of the block checksum against the standard library's checksums."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


# grain's mp_prefetch pickles WindowRows (cloudpickle, by reference) into spawned worker
# processes: they import this module by name from the parent's sys.path.
class WindowRows:
  """Window w of the seeded block order -> its rows, shuffled: the work `pipeline._RebatchIterator`
  does in-process, as a grain map so that `mp_prefetch` can run it in worker processes."""

  def __init__(self, data_dir: str, window_blocks: int, seed: int = 0):
    self.data_dir, self.window_blocks, self.seed = data_dir, window_blocks, seed
    self._blocks = None

  def __call__(self, w: int) -> dict:
    from esmjax.data.format import dataset as ds_lib
    from esmjax.data.pipeline import batches as pipeline

    if self._blocks is None:
      self._blocks = pipeline.block_dataset(
        ds_lib.open_dataset(self.data_dir), seed=self.seed, shuffle=True, num_epochs=None
      )
    lo = w * self.window_blocks
    data = ds_lib.concat_blocks([self._blocks[i] for i in range(lo, lo + self.window_blocks)])
    perm = np.random.default_rng([self.seed, w]).permutation(len(data["user"]))
    return ds_lib.slice_block(data, perm)

  def __getstate__(self):
    return {**self.__dict__, "_blocks": None}


def _rebatch(windows, batch: int):
  from esmjax.data.format import dataset as ds_lib

  carry = None
  for w in windows:
    data = w if carry is None else ds_lib.concat_blocks([carry, w])
    n, start = len(data["user"]), 0
    while n - start >= batch:
      yield ds_lib.slice_block(data, slice(start, start + batch))
      start += batch
    carry = ds_lib.slice_block(data, slice(start, None))


def _open_pipeline(data_dir: Path, variant: dict, batch: int, window_blocks: int):
  """An iterator of batches for one measured variant (see `pipeline_rates`), and its closers."""
  import grain

  from esmjax.common import absl_flags
  from esmjax.data.format import dataset as ds_lib
  from esmjax.data.pipeline import batches as pipeline

  absl_flags.ensure_parsed("data_throughput")  # grain's mp_prefetch reads absl flags
  d = ds_lib.open_dataset(str(data_dir))
  if variant["pipeline"] == "train_iter_dataset":
    # As the trainer builds it (config.data defaults: window 8 blocks, prefetch 2), plus threads.
    cfg = pipeline.PipelineConfig(
      batch_size=batch,
      seed=0,
      shuffle=True,
      prefetch=2,
      window_blocks=window_blocks,
      threads=variant["threads"],
      verify=variant.get("verify", True),
    )
    it = iter(pipeline.train_iter_dataset(d, cfg))
    return d, it, [it]
  # One window at a time per process (to_iter_dataset's defaults, 16 threads and 500 elements ahead,
  # would hold hundreds of MB-sized windows).
  ds = (
    grain.MapDataset.range(10**9)
    .map(WindowRows(str(data_dir), window_blocks))
    .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
  )
  if variant["workers"]:
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=variant["workers"], per_worker_buffer_size=2)
    )
  src = iter(ds)
  return d, _rebatch(src, batch), [src]


def _median(runs: list[dict], key: str) -> float:
  return float(np.median([r[key] for r in runs]))


def pipeline_rates(
  data_dir: Path,
  variants: list[dict],
  seconds: float,
  reps: int,
  batch: int = 4096,
  window_blocks: int = 8,
  layout: str = "default",
) -> list[dict]:
  """rows/s of batches for each variant, measured round-robin: `reps` windows of `seconds` each,
  variant after variant, so that the other jobs' load falls on all of them alike; medians reported.

  Variants: {"pipeline": "train_iter_dataset", "threads": t, "verify": v}:
  `pipeline.train_iter_dataset` as the trainer builds it (in-process, prefetch thread, t gather
  threads, block checksums verified or not); {"pipeline":
  "windows+mp_prefetch", "workers": k}: shuffled windows made by k grain worker processes
  (`mp_prefetch`; k=0 runs the same windows in-process), cut into batches here.
  """
  import psutil

  me = psutil.Process()

  def cpu_now():  # this process (all threads) and its worker processes
    total = 0.0
    for p in [me] + me.children(recursive=True):
      try:
        total += sum(p.cpu_times()[:2])
      except psutil.Error:
        pass
    return total

  opened = []
  for v in variants:
    d, it, closers = _open_pipeline(data_dir, v, batch, window_blocks)
    b = next(it)  # start-up (worker spawn, first window) not timed
    opened.append((d, it, closers, sum(x[:1].nbytes for x in b.values())))
    del b
  runs = [[] for _ in variants]
  for _ in range(reps):
    for (_, it, _, _), out in zip(opened, runs, strict=True):
      load, c0 = os.getloadavg()[0], cpu_now()
      n, t0 = 0, time.time()
      while time.time() - t0 < seconds:
        n += len(next(it)["user"])
      dt, cpu = time.time() - t0, cpu_now() - c0
      out.append({"rows_per_s": n / dt, "rows_per_cpu_s": n / max(cpu, 1e-9), "load": load})
  results = []
  for v, (_, _, closers, row_bytes), out in zip(variants, opened, runs, strict=True):
    for c in closers:
      if hasattr(c, "close"):
        c.close()
    results.append(
      {
        **v,
        "layout": layout,
        "workers": v.get("workers", 0),
        "threads": v.get("threads", 1),
        "verify": v.get("verify", True),
        "rows_per_s": round(_median(out, "rows_per_s")),
        "rows_per_s_runs": [round(r["rows_per_s"]) for r in out],
        "rows_per_cpu_s": round(_median(out, "rows_per_cpu_s")),
        "load_1min": [round(r["load"], 2) for r in out],
        "gb_per_s": round(_median(out, "rows_per_s") * row_bytes / 1e9, 3),
        "batch": batch,
        "row_bytes": row_bytes,
        "window_rows": window_blocks * d.manifest["block_rows"],
        "block_rows": d.manifest["block_rows"],
        "seconds_per_run": seconds,
        "runs": reps,
      }
    )
  return results


def pipeline_variants(threads: str, workers: str) -> list[dict]:
  ints = lambda s: [int(x) for x in s.split(",") if x != ""]
  return [
    {"pipeline": "train_iter_dataset", "threads": t, "verify": v}
    for t in ints(threads)
    for v in (True, False)
  ] + [{"pipeline": "windows+mp_prefetch", "workers": w} for w in ints(workers)]


def checksum_rates(data_dir: Path, reps: int = 5) -> list[dict]:
  """GB/s of the block checksum and of the standard library's checksums on the dataset's block
  records: one block again and again (in cache) and every block once (from memory, as the pipeline
  reads them); medians of `reps` round-robin runs."""
  import hashlib
  import zlib

  from esmjax.data.format import dataset as ds_lib
  from esmjax.data.format import shards

  d = ds_lib.open_dataset(str(data_dir))
  readers = [ds_lib.ShardReader(p) for p in d.shard_paths]
  records = [r.record(j) for r in readers for j in range(len(r))]
  total = sum(len(r) for r in records)
  one = bytes(records[0])
  fns = {
    "shards.block_checksum": shards.block_checksum,
    "zlib.crc32": zlib.crc32,
    "zlib.adler32": zlib.adler32,
    "hashlib.sha1": lambda b: hashlib.sha1(b).digest(),
    "hashlib.md5": lambda b: hashlib.md5(b).digest(),
    "hashlib.blake2b": lambda b: hashlib.blake2b(b).digest(),
  }
  times = {(name, where): [] for name in fns for where in ("cache", "memory")}
  for _ in range(reps):
    for name, fn in fns.items():
      n = max(1, total // len(one) // 4)
      t0 = time.perf_counter()
      for _ in range(n):
        fn(one)
      times[(name, "cache")].append(n * len(one) / (time.perf_counter() - t0))
      t0 = time.perf_counter()
      for r in records:
        fn(r)
      times[(name, "memory")].append(total / (time.perf_counter() - t0))
  return [
    {
      "function": name,
      "data": where,
      "gb_per_s": round(float(np.median(v)) / 1e9, 2),
      "block_bytes": len(one),
      "load_1min": round(os.getloadavg()[0], 2),
    }
    for (name, where), v in times.items()
  ]
