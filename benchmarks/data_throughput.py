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

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import data_throughput_converter as converter
import data_throughput_pipeline as pipeline
import data_throughput_report as report

FULL_DUMP_BYTES = 38 * 10**9
TRAIN_ROWS = 42_300_000
PIPELINE_TARGET = 2_000_000  # rows/s of batches from the trainer's pipeline (issue #3)


def measure_pipelines(tmp: Path, sk: Path, cf: Path, args) -> list[dict]:
  """The pipeline variants on the converted default layout (tmp/out_full), then the trainer's
  pipeline on the same rows with one value per multi-valued field (what peers keep): rows/s against
  row size."""
  pipe = pipeline.pipeline_rates(
    tmp / "out_full",
    pipeline.pipeline_variants(args.pipeline_threads, args.pipeline_workers),
    args.pipeline_seconds,
    args.pipeline_runs,
  )
  for r in pipe:
    print(f"pipeline: {json.dumps(r)}", flush=True)
  converter.run_converter(
    sk, cf, tmp / "out_lean", args.workers, converter.LEAN_OVERRIDES, range_mb=args.range_mb
  )
  lean = pipeline.pipeline_rates(
    tmp / "out_lean",
    pipeline.pipeline_variants(args.pipeline_threads, ""),
    args.pipeline_seconds,
    args.pipeline_runs,
    layout="max_len=1 (lean)",
  )
  for r in lean:
    print(f"pipeline: {json.dumps(r)}", flush=True)
  return pipe + lean


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--skeleton_mb", type=float, default=200.0)
  ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  ap.add_argument(
    "--pipeline_seconds", type=float, default=2.0, help="one timed run of one pipeline variant"
  )
  ap.add_argument(
    "--pipeline_runs", type=int, default=5, help="round-robin runs per variant (medians reported)"
  )
  ap.add_argument(
    "--pipeline_threads", default="1,2", help="gather threads of train_iter_dataset to measure"
  )
  ap.add_argument(
    "--pipeline_workers", default="0,1,2", help="grain worker processes of windows+mp_prefetch"
  )
  ap.add_argument(
    "--pipeline_only",
    action="store_true",
    help="only the pipeline section (the data is still generated and converted, untimed); "
    "prints, writes no results",
  )
  ap.add_argument(
    "--range_mb",
    type=float,
    default=4.0,
    help="converter byte range per task (4 MB is the floor): both sizes then run equal tasks, only "
    "more of them",
  )
  ap.add_argument("--keep_tmp", action="store_true")
  args = ap.parse_args()
  common.RESULTS.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix="esmjax_data_bench_"))
  load0 = round(os.getloadavg()[0], 2)  # other jobs on the machine slow everything down: recorded
  try:
    t0 = time.time()
    sk, cf, n_rows = converter.generate_raw(tmp, args.skeleton_mb)
    gen_s = time.time() - t0
    print(
      f"generated {sk.stat().st_size / 1e6:.0f} MB skeleton ({n_rows:,} rows) + "
      f"{cf.stat().st_size / 1e6:.0f} MB common features in {gen_s:.0f} s",
      flush=True,
    )
    if args.pipeline_only:
      converter.run_converter(sk, cf, tmp / "out_full", args.workers, range_mb=args.range_mb)
      pipe = measure_pipelines(tmp, sk, cf, args)
      sums = pipeline.checksum_rates(tmp / "out_full")
      print(
        "\n".join(
          report.pipeline_markdown(pipe, {"pipeline_rows_per_s": PIPELINE_TARGET})
          + report.checksum_markdown(sums)
        )
      )
      return
    half = tmp / "skeleton_half.csv"
    converter.head_lines(sk, half, sk.stat().st_size // 2)
    conv = {}
    for name, path in (("half", half), ("full", sk)):
      conv[name] = converter.run_converter(
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
    print(
      "estimate for the full 38 GB dump on one such machine: "
      f"{est['hours_at_measured_mb_per_s']:.2f} h at the "
      f"measured MB/s; {est['hours_idle_machine']:.2f} h with {cpus} idle cores",
      flush=True,
    )
    pipe = measure_pipelines(tmp, sk, cf, args)
    sums = pipeline.checksum_rates(tmp / "out_full")
    mem_growth = conv["full"]["peak_rss_tree_mb"] / max(conv["half"]["peak_rss_tree_mb"], 1e-9)
    result = {
      "machine": {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
      },
      "generated": {
        "skeleton_mb": round(sk.stat().st_size / 1e6, 1),
        "common_mb": round(cf.stat().st_size / 1e6, 1),
        "rows": n_rows,
        "seconds": round(gen_s, 1),
      },
      "converter": conv,
      "peak_rss_ratio_full_over_half": round(mem_growth, 3),
      "full_dump_estimate": est,
      "pipeline": pipe,
      "checksums": sums,
      "targets": {"pipeline_rows_per_s": PIPELINE_TARGET, "training_rows_per_s": 100_000},
      "time": time.strftime("%Y-%m-%d %H:%M:%S"),
      "load_average_1min": {"start": load0, "end": round(os.getloadavg()[0], 2)},
    }
    (common.RESULTS / "data_throughput.json").write_text(json.dumps(result, indent=1))
    (common.RESULTS / "data_throughput.md").write_text(report.markdown(result))
    print(report.markdown(result))
  finally:
    if not args.keep_tmp:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
