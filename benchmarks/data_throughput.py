r"""Data throughput: the Ali-CCP converter (MB/s, rows/s, peak memory), the grain pipeline (rows/s)
with block checksums verified and not, and the checksum functions (GB/s).

    python benchmarks/data_throughput.py [--skeleton_mb=200] [--workers=2] [--pipeline_seconds=2]
        [--pipeline_runs=5] [--pipeline_threads=1,2] [--pipeline_workers=0,1,2] [--pipeline_only]

1. Generates a raw Ali-CCP-format skeleton (--skeleton_mb, default 200 MB) and its common-features
   file into a temp dir (deleted afterwards; never committed). The generated layout follows the
   public dump: ~58 impressions per common_feature_index, grouped; ~12 skeleton items per row
   (205/206/207/216/301, 1-5 × 210, 508/509/702 with values, 0-3 × 853); common rows with the user
   profile fields and four behaviour lists of ~40-150 weighted ids each (~9 KB a row).
2. Converts the first half and then the whole skeleton (same common file) in a subprocess each,
   sampling the RSS of the converter's process tree every 20 ms: peak memory must not grow with the
   skeleton length.
3. Reads the converted dataset with `pipeline.train_iter_dataset` as the trainer builds it (batch
   4096; 1 and 2 gather threads; every block verified against its checksum, and, for comparison,
   not verified), and with an equivalent window pipeline in-process and under 1 and 2 grain worker
   processes (`mp_prefetch`); round-robin runs of --pipeline_seconds, medians of rows/s and of rows
   per CPU-second; then the trainer's pipeline on a lean layout (one value per multi-valued field).
   Verdict: the trainer's pipeline, checksums on, against the 2 M rows/s target.
4. Times the block checksum (`shards.block_checksum`) and the standard library's checksums on the
   converted blocks: one block again and again (in cache) and every block once (from memory, as the
   pipeline reads them).
5. Prints and writes benchmarks/results/data_throughput.{json,md}, including the time the full
   38 GB dump would take at the measured conversion rate. --pipeline_only: steps 3 and 4 alone (on
   a converted --skeleton_mb), printed, nothing written.

Expected on the 2-core CPU machine: see benchmarks/results/data_throughput.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

ROOT = harness.ROOT
FULL_DUMP_BYTES = 38 * 10**9
TRAIN_ROWS = 42_300_000
PIPELINE_TARGET = 2_000_000  # rows/s of batches from the trainer's pipeline (issue #3)


@dataclasses.dataclass
class Opts(harness.Options):
  skeleton_mb: float = harness.opt(200.0, "MB of generated raw skeleton")
  workers: int = harness.opt(os.cpu_count() or 1, "converter worker processes")
  pipeline_seconds: float = harness.opt(2.0, "one timed run of one pipeline variant")
  pipeline_runs: int = harness.opt(5, "round-robin runs per variant (medians reported)")
  pipeline_threads: str = harness.opt("1,2", "gather threads of train_iter_dataset to measure")
  pipeline_workers: str = harness.opt("0,1,2", "grain worker processes of windows+mp_prefetch")
  pipeline_only: bool = harness.opt(False, "the pipeline section alone; prints, writes nothing")
  range_mb: float = harness.opt(
    4.0, "converter bytes per task (4 MB is the floor): both sizes run equal tasks, only more"
  )
  keep_tmp: bool = harness.opt(False, "keep the generated and converted data")


# ---------------------------------------------------------------------------------------------
# A raw Ali-CCP-format generator, and the converter CLI measured.


def _items(field: str, ids, vals) -> list[str]:
  return [f"{field}\x02{i}\x03{v}" for i, v in zip(ids, vals, strict=True)]


def generate_raw(directory: Path, skeleton_mb: float, seed: int = 0) -> tuple[Path, Path, int]:
  """Writes skeleton.csv (≈ skeleton_mb MB) and common.csv; returns their paths and the row
  count."""
  rng = np.random.default_rng(seed)
  sk_path, cf_path = directory / "skeleton.csv", directory / "common.csv"
  target = int(skeleton_mb * 1e6)
  rows_per_user = 58
  n_users = max(1, int(target / 260 / rows_per_user))
  keys = [f"{k:016x}" for k in rng.integers(0, 2**63, n_users)]
  logv = lambda n: [f"{x:.5g}" for x in np.log1p(rng.integers(1, 50, n))]
  with open(cf_path, "w") as f:
    for u in range(n_users):
      it = [f"101\x02{rng.integers(1, 400_000)}\x031.0"]
      profile = (("121", 98), ("122", 14), ("124", 3), ("125", 8), ("126", 4), ("127", 4))
      for fld, card in (*profile, ("128", 3), ("129", 5)):
        it.append(f"{fld}\x02{rng.integers(1, card + 1) + 1000 * len(it)}\x031.0")
      lists = (("109_14", 40, 10_000), ("110_14", 150, 400_000), ("127_14", 100, 100_000))
      for fld, mean, card in (*lists, ("150_14", 120, 100_000)):
        n = int(rng.geometric(1 / mean))
        it += _items(fld, rng.integers(1, card, n), logv(n))
      f.write(f"{keys[u]},{len(it)},{chr(1).join(it)}\n")
  written, sid = 0, 0
  with open(sk_path, "w") as f:
    while written < target:  # one user's impressions at a time, drawn as arrays
      u = int(rng.integers(0, n_users))
      n = int(rng.poisson(rows_per_user)) + 1
      click = rng.random(n) < 0.04
      buy = click & (rng.random(n) < 0.055)
      base = np.stack(
        [rng.integers(1, hi, n) for hi in (4_000_000, 10_000, 400_000, 200_000, 4)], 1
      )
      n210, n853 = rng.integers(1, 6, n), rng.integers(0, 4, n)
      ids210 = rng.integers(1, 100_000, int(n210.sum()))
      ids853 = rng.integers(1, 1_000_000, int(n853.sum()))
      v853 = np.log1p(rng.integers(1, 50, int(n853.sum())))
      combo = [
        (fld, rng.random(n) < p, rng.integers(1, 1_000_000, n), np.log1p(rng.integers(1, 30, n)))
        for fld, p in (("508", 0.6), ("509", 0.3), ("702", 0.3))
      ]
      o210 = np.concatenate([[0], np.cumsum(n210)])
      o853 = np.concatenate([[0], np.cumsum(n853)])
      lines = []
      for j in range(n):
        fields = ("205", "206", "207", "216", "301")
        it = [f"{fld}\x02{v}\x031.0" for fld, v in zip(fields, base[j], strict=True)]
        it += [f"210\x02{v}\x031.0" for v in ids210[o210[j] : o210[j + 1]]]
        it += [f"{fld}\x02{ids[j]}\x03{vals[j]:.5g}" for fld, has, ids, vals in combo if has[j]]
        at = slice(o853[j], o853[j + 1])
        it += [f"853\x02{v}\x03{w:.5g}" for v, w in zip(ids853[at], v853[at], strict=True)]
        sid += 1
        lines.append(f"{sid},{int(click[j])},{int(buy[j])},{keys[u]},{len(it)},{chr(1).join(it)}\n")
      s = "".join(lines)
      f.write(s)
      written += len(s)
  return sk_path, cf_path, sid


def head_lines(src: Path, dst: Path, nbytes: int) -> None:
  """The first lines of src covering nbytes (cut at a line end)."""
  with open(src, "rb") as f, open(dst, "wb") as g:
    g.write(f.read(nbytes))
    g.write(f.readline())


LEAN = ("109_14", "110_14", "127_14", "150_14", "210", "853")
LEAN_OVERRIDES = [f'--config.fields["{f}"].max_len=1' for f in LEAN]


def run_converter(
  skeleton: Path, common: Path, out_dir: Path, workers: int, extra=(), range_mb=0.0
):
  """Runs the converter CLI in a subprocess: wall and CPU time, peak RSS of the whole process tree
  and of its largest process, sampled every 20 ms."""
  cmd = [sys.executable, "-m", "esmjax.data.aliccp", f"--skeleton={skeleton}"]
  cmd += [f"--common_features={common}", f"--out_dir={out_dir}", f"--workers={workers}"]
  cmd += [f"--range_mb={range_mb}"] if range_mb else []
  if extra:  # config overrides follow --config
    cmd += [f"--config={ROOT / 'configs/data/aliccp_raw.py'}"] + list(extra)
  # CPU time: the converter and its (waited-for) workers.
  f = harness.run_command(cmd, cwd=ROOT, sample_s=0.02)
  wall, cpu, err = f.wall_s, f.cpu_s, f.stderr
  if f.returncode:
    raise RuntimeError(f"converter failed ({f.returncode}):\n{err[-3000:]}")
  man = json.loads((out_dir / "manifest.json").read_text())
  nbytes = skeleton.stat().st_size + common.stat().st_size
  rows = man["num_rows"]
  return dict(
    skeleton_bytes=skeleton.stat().st_size, common_bytes=common.stat().st_size, rows=rows,
    wall_s=round(wall, 2), internal_s=man["conversion"]["seconds"],
    mb_per_s=round(nbytes / 1e6 / wall, 2), rows_per_s=round(rows / wall),
    peak_rss_tree_mb=round(f.peak_tree_bytes / 2**20, 1),
    peak_rss_largest_process_mb=round(f.peak_one_bytes / 2**20, 1), cpu_s=round(cpu, 2),
    mb_per_cpu_s=round(nbytes / 1e6 / cpu, 2), rows_per_cpu_s=round(rows / cpu),
    workers=workers, console_tail=err.strip().splitlines()[-1:],
  )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The pipeline: rows/s of batches from the converted dataset (the trainer's pipeline, and an
# equivalent window pipeline under grain worker processes), measured round-robin; the GB/s of the
# block checksum against the standard library's checksums.


# grain's mp_prefetch pickles WindowRows (cloudpickle, by reference) into spawned worker
# processes: they import it by name (`data_throughput`) from the parent's sys.path, so the
# pipeline uses it through that name, never as __main__'s.
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
  import data_throughput  # this file, by name (see WindowRows)
  import grain

  from esmjax.common import absl_flags
  from esmjax.data.format import dataset as ds_lib
  from esmjax.data.pipeline import batches as pipeline

  absl_flags.ensure_parsed("data_throughput")  # grain's mp_prefetch reads absl flags
  d = ds_lib.open_dataset(str(data_dir))
  if variant["pipeline"] == "train_iter_dataset":
    # As the trainer builds it (config.data defaults: window 8 blocks, prefetch 2), plus threads.
    cfg = pipeline.PipelineConfig(
      batch_size=batch, seed=0, shuffle=True, prefetch=2, window_blocks=window_blocks,
      threads=variant["threads"], verify=variant.get("verify", True),
    )  # fmt: skip
    it = iter(pipeline.train_iter_dataset(d, cfg))
    return d, it, [it]
  # One window at a time per process (to_iter_dataset's defaults, 16 threads and 500 elements ahead,
  # would hold hundreds of MB-sized windows).
  ds = (
    grain.MapDataset.range(10**9)
    .map(data_throughput.WindowRows(str(data_dir), window_blocks))
    .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
  )
  if variant["workers"]:
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=variant["workers"], per_worker_buffer_size=2)
    )
  src = iter(ds)
  return d, _rebatch(src, batch), [src]


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
  threads, block checksums verified or not); {"pipeline": "windows+mp_prefetch", "workers": k}:
  shuffled windows made by k grain worker processes (`mp_prefetch`; k=0 runs the same windows
  in-process), cut into batches here.
  """
  cpu_now = harness.tree_cpu_s  # this process (all threads) and its worker processes
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
      getattr(c, "close", lambda: None)()
    med = lambda k, out=out: harness.spread([r[k] for r in out])["median"]
    rate, block_rows = med("rows_per_s"), d.manifest["block_rows"]
    results.append(
      {**v, **dict(
        layout=layout, workers=v.get("workers", 0), threads=v.get("threads", 1),
        verify=v.get("verify", True), rows_per_s=round(rate),
        rows_per_s_runs=[round(r["rows_per_s"]) for r in out],
        rows_per_cpu_s=round(med("rows_per_cpu_s")),
        load_1min=[round(r["load"], 2) for r in out], gb_per_s=round(rate * row_bytes / 1e9, 3),
        batch=batch, row_bytes=row_bytes, window_rows=window_blocks * block_rows,
        block_rows=block_rows, seconds_per_run=seconds, runs=reps,
      )}
    )  # fmt: skip
  return results


def pipeline_variants(threads: str, workers: str) -> list[dict]:
  ints = lambda s: [int(x) for x in s.split(",") if x != ""]
  out = [{"pipeline": "train_iter_dataset", "threads": t, "verify": v} for t in ints(threads)
         for v in (True, False)]  # fmt: skip
  return out + [{"pipeline": "windows+mp_prefetch", "workers": w} for w in ints(workers)]


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
  load = lambda: round(os.getloadavg()[0], 2)
  return [
    dict(function=name, data=where, gb_per_s=round(float(np.median(v)) / 1e9, 2),
         block_bytes=len(one), load_1min=load())
    for (name, where), v in times.items()
  ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The Markdown report.


CONVERTER_HEADER = (
  "| skeleton | rows | wall s | MB/s (skeleton+common) | rows/s | CPU s | MB per CPU-s | rows per "
  "CPU-s | peak RSS, process tree | peak RSS, largest process |\n|" + "---|" * 10
)
PIPELINE_HEADER = (
  "| pipeline | layout | checksums | gather threads | grain worker processes | rows/s (median) | "
  "GB/s | rows per CPU-s | bytes/row | block rows | window rows | load avg during runs |\n|"
) + "---|" * 12
PIPELINE_NOTES = """
`train_iter_dataset` is `esmjax.data.pipeline` as the trainer builds it (in-process, one prefetch \
thread;
gather threads 1 is the trainer's default, `PipelineConfig.threads`). It cannot run under grain's
`mp_prefetch` (it is an IterDataset with (window, offset) state, not a MapDataset), so worker \
processes are
measured on an equivalent pipeline: `windows+mp_prefetch` maps a window of blocks to its \
concatenated,
row-shuffled rows as a grain element and cuts batches in the main process (0 workers: the same \
in-process).
Rows per CPU-second = rows / CPU time of the process (all threads) and its workers: the rate one \
idle core
would give. With other jobs on the CPUs, rows/s is a lower bound and extra threads or workers only \
add CPU."""


def markdown(r: dict) -> str:
  c, g, e, la = r["converter"], r["generated"], r["full_dump_estimate"], r["load_average_1min"]
  lines = [
    "# Data throughput (benchmarks/data_throughput.py)",
    "",
    f"Machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}; {r['time']}; 1-min "
    f"load average {la['start']} at the start, {la['end']} at the end (other jobs shared the "
    "CPUs: numbers are lower bounds).",
    f"Input: generated raw Ali-CCP format, skeleton {g['skeleton_mb']} MB ({g['rows']:,} rows) + "
    f"common features {g['common_mb']} MB.",
    "",
    "## Converter (`python -m esmjax.data.aliccp`)",
    "",
    CONVERTER_HEADER,
  ]
  for x in (c["half"], c["full"]):
    lines.append(
      f"| {x['skeleton_bytes'] / 1e6:.0f} MB | {x['rows']:,} | {x['wall_s']} | {x['mb_per_s']} | "
      f"{x['rows_per_s']:,} | {x['cpu_s']} | {x['mb_per_cpu_s']} | {x['rows_per_cpu_s']:,} | "
      f"{x['peak_rss_tree_mb']} MB | {x['peak_rss_largest_process_mb']} MB |"
    )
  lines += [
    "",
    f"Peak RSS full / half skeleton: **{r['peak_rss_ratio_full_over_half']}** (1.0 = independent "
    "of skeleton length).",
    f"Estimate for the full 38 GB dump on one such machine: **{e['hours_at_measured_mb_per_s']} "
    f"h** at the measured MB/s ({e['hours_at_measured_rows_per_s_train_rows']} h for the 42.3 M "
    f"train rows at the measured rows/s); **{e['hours_idle_machine']} h** on idle cores "
    "(measured CPU time per MB, spread over the workers).",
    "",
  ]
  lines += pipeline_markdown(r["pipeline"], r["targets"])
  lines += checksum_markdown(r["checksums"])
  return "\n".join(lines)


def checksum_markdown(sums: list[dict]) -> list[str]:
  lines = [
    f"## Checksums (on {sums[0]['block_bytes']:,}-byte block records)",
    "",
    "| function | GB/s, one block again and again (cache) | GB/s, every block once (memory) |",
    "|---|---|---|",
  ]
  by = {(x["function"], x["data"]): x["gb_per_s"] for x in sums}
  for name in dict.fromkeys(x["function"] for x in sums):
    lines.append(f"| {name} | {by[(name, 'cache')]} | {by[(name, 'memory')]} |")
  return lines + [
    "",
    "Shards store `shards.block_checksum` per block (three 64-bit sums of the record's words, "
    "plain and position-weighted, in NumPy); the pipeline checks a window's blocks on its verify "
    "thread while it reads the one before.",
    "",
  ]


def _trainers(pipe: list[dict], verify: bool) -> dict | None:
  """The trainer's pipeline as it runs (default layout, 1 gather thread), checksums on or off."""
  for p in pipe:
    if (p["pipeline"], p["layout"], p["threads"]) == ("train_iter_dataset", "default", 1):
      if p["verify"] == verify:
        return p
  return None


def pipeline_markdown(pipe: list[dict], targets: dict) -> list[str]:
  """The pipeline table, its notes and the verdict against the rows/s target."""
  lines = [
    f"## Pipeline (batch {pipe[0]['batch']}, block and row shuffle on)",
    "",
    f"Round-robin: {pipe[0]['runs']} runs of {pipe[0]['seconds_per_run']} s per variant, one "
    "variant after another; medians (the runs' rows/s and 1-min load averages are in the JSON).",
    "",
    PIPELINE_HEADER,
  ]
  for p in pipe:
    mp = p["pipeline"] != "train_iter_dataset"
    lines.append(
      f"| {p['pipeline']} | {p['layout']} | {'verified' if p['verify'] else 'off'} | "
      f"{'-' if mp else p['threads']} | {p['workers']} | "
      f"{p['rows_per_s']:,} | {p['gb_per_s']} | {p['rows_per_cpu_s']:,} | {p['row_bytes']} | "
      f"{p['block_rows']} | {p['window_rows']} | {min(p['load_1min'])}-{max(p['load_1min'])} |"
    )
  lines += PIPELINE_NOTES.split("\n")
  trainer, unverified = _trainers(pipe, True), _trainers(pipe, False)
  best = max(
    (p for p in pipe if p["layout"] == "default" and p["verify"]),
    key=lambda p: p["rows_per_s"],
    default=None,
  )
  lean = [p for p in pipe if p["layout"] != "default" and p["threads"] == 1 and p["verify"]]
  t = targets["pipeline_rows_per_s"]
  if trainer:
    met = "**met**" if trainer["rows_per_s"] >= t else "**not met**"
    lines += [
      "",
      f"Verdict: target ≥ {t:,} rows/s — {met}: the trainer's pipeline reads "
      f"{trainer['rows_per_s']:,} rows/s (median; default layout, {trainer['row_bytes']} B/row, "
      f"load average {min(trainer['load_1min'])}-{max(trainer['load_1min'])}), "
      f"{trainer['rows_per_cpu_s']:,} rows per CPU-second, every block verified against its "
      "checksum.",
    ]
  if trainer and unverified:
    lines += [
      "Checksums off (for comparison only; the trainer always verifies): "
      f"{unverified['rows_per_s']:,} rows/s, {unverified['rows_per_cpu_s']:,} rows per "
      f"CPU-second; verified / off = {trainer['rows_per_s'] / max(unverified['rows_per_s'], 1):.2f}"
      f" (rows/s), {trainer['rows_per_cpu_s'] / max(unverified['rows_per_cpu_s'], 1):.2f} (rows "
      "per CPU-second)."
    ]
  if best and best is not trainer:
    lines += [
      f"Best default-layout variant: {best['pipeline']} ({best['threads']} gather threads, "
      f"{best['workers']} workers), {best['rows_per_s']:,} rows/s, {best['rows_per_cpu_s']:,} rows "
      "per CPU-second."
    ]
  if lean:
    lines += [
      f"Lean layout (one value per multi-valued field, {lean[0]['row_bytes']} B/row): "
      f"{lean[0]['rows_per_s']:,} rows/s (median), {lean[0]['rows_per_cpu_s']:,} rows per "
      "CPU-second."
    ]
  return lines + [""]


# ---------------------------------------------------------------------------------------------
# Main.


def measure_pipelines(tmp: Path, sk: Path, cf: Path, args) -> list[dict]:
  """The pipeline variants on the converted default layout (tmp/out_full), then the trainer's
  pipeline on the same rows with one value per multi-valued field (what peers keep): rows/s against
  row size."""
  timing = (args.pipeline_seconds, args.pipeline_runs)
  variants = pipeline_variants(args.pipeline_threads, args.pipeline_workers)
  pipe = pipeline_rates(tmp / "out_full", variants, *timing)
  for r in pipe:
    print(f"pipeline: {json.dumps(r)}", flush=True)
  run_converter(sk, cf, tmp / "out_lean", args.workers, LEAN_OVERRIDES, range_mb=args.range_mb)
  variants = pipeline_variants(args.pipeline_threads, "")
  lean = pipeline_rates(tmp / "out_lean", variants, *timing, layout="max_len=1 (lean)")
  for r in lean:
    print(f"pipeline: {json.dumps(r)}", flush=True)
  return pipe + lean


def main(argv=None) -> None:
  args = harness.parse(Opts, argv, __doc__)
  rec = harness.Record("data_throughput", args)
  tmp = Path(tempfile.mkdtemp(prefix="esmjax_data_bench_"))
  load0 = round(os.getloadavg()[0], 2)  # other jobs on the machine slow everything down: recorded
  try:
    t0 = time.time()
    sk, cf, n_rows = generate_raw(tmp, args.skeleton_mb)
    gen_s = time.time() - t0
    sk_mb, cf_mb = sk.stat().st_size / 1e6, cf.stat().st_size / 1e6
    print(f"generated {sk_mb:.0f} MB skeleton ({n_rows:,} rows) + {cf_mb:.0f} MB common features "
          f"in {gen_s:.0f} s", flush=True)  # fmt: skip
    if args.pipeline_only:
      run_converter(sk, cf, tmp / "out_full", args.workers, range_mb=args.range_mb)
      pipe = measure_pipelines(tmp, sk, cf, args)
      sums = checksum_rates(tmp / "out_full")
      md = pipeline_markdown(pipe, {"pipeline_rows_per_s": PIPELINE_TARGET})
      print("\n".join(md + checksum_markdown(sums)))
      return
    half = tmp / "skeleton_half.csv"
    head_lines(sk, half, sk.stat().st_size // 2)
    conv = {}
    for name, path in (("half", half), ("full", sk)):
      conv[name] = run_converter(
        path, cf, tmp / f"out_{name}", args.workers, range_mb=args.range_mb
      )
      print(f"converter [{name}]: {json.dumps(conv[name])}", flush=True)
    full = conv["full"]
    est_s = FULL_DUMP_BYTES / (full["mb_per_s"] * 1e6)
    cpus = min(args.workers, os.cpu_count() or 1)
    est = {
      "full_dump_bytes": FULL_DUMP_BYTES,
      "hours_at_measured_mb_per_s": round(est_s / 3600, 2),
      "hours_at_measured_rows_per_s_train_rows": round(TRAIN_ROWS / full["rows_per_s"] / 3600, 2),
      # the same work on otherwise idle CPUs: CPU time per byte, spread over the worker processes
      "hours_idle_machine": round(FULL_DUMP_BYTES / (full["mb_per_cpu_s"] * 1e6 * cpus) / 3600, 2),
    }
    print("estimate for the full 38 GB dump on one such machine: "
          f"{est['hours_at_measured_mb_per_s']:.2f} h at the measured MB/s; "
          f"{est['hours_idle_machine']:.2f} h with {cpus} idle cores", flush=True)  # fmt: skip
    pipe = measure_pipelines(tmp, sk, cf, args)
    sums = checksum_rates(tmp / "out_full")
    mem_growth = conv["full"]["peak_rss_tree_mb"] / max(conv["half"]["peak_rss_tree_mb"], 1e-9)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    rec["machine"].update(machine, platform=platform.platform())
    gen = {"skeleton_mb": round(sk_mb, 1), "common_mb": round(cf_mb, 1), "rows": n_rows}
    result = {
      "generated": {**gen, "seconds": round(gen_s, 1)},
      "converter": conv,
      "peak_rss_ratio_full_over_half": round(mem_growth, 3),
      "full_dump_estimate": est,
      "pipeline": pipe,
      "checksums": sums,
      "targets": {"pipeline_rows_per_s": PIPELINE_TARGET, "training_rows_per_s": 100_000},
      "time": time.strftime("%Y-%m-%d %H:%M:%S"),
      "load_average_1min": {"start": load0, "end": round(os.getloadavg()[0], 2)},
    }
    rec.update(result)
    rec.write(markdown(rec))
    print(markdown(rec))
  finally:
    if not args.keep_tmp:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
