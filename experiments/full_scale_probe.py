r"""Probes of the full-scale path's per-row costs, each timed with its variants interleaved:

  python -m experiments.full_scale_probe csv [--rows=1000000] [--reps=3]
  python -m experiments.full_scale_probe metrics [--rows=5000000]

- csv: rows/s of the prediction CSV writer (`esmjax.serving.prediction_files.write_csv`) against
  the one-row-at-a-time `csv.writer` loop it replaces, on the same rows (bytes checked equal), and
  of the Parquet writer.
- metrics: peak memory per row of `esmjax.evaluation.metrics.evaluate` on synthetic rows shaped
  like the full-scale predict stage (3 float32 predictions, uint8 labels, int64 users, float32
  ground truth), measured with tracemalloc (NumPy reports its buffers to it), and its time.

Writes experiments/results/full_scale_probe_<probe>.{md,json} with the CPU model and the load.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import time

import numpy as np

from benchmarks import reporting


def _pred_rows(n: int, seed: int = 0):
  """Sample ids and three float32 prediction columns like a CTR / CVR / CTCVR model's."""
  rng = np.random.default_rng(seed)
  pctr = (rng.beta(1.2, 25.0, n)).astype(np.float32)
  pcvr = (rng.beta(1.1, 150.0, n)).astype(np.float32)
  return np.arange(1, n + 1, dtype=np.int64), [pctr, pcvr, pctr * pcvr]


def _csv_loop(f, names, ids, cols) -> None:
  """The writer `esmjax.serving.predict.predict_to_csv` used before prediction_files."""
  w = csv.writer(f)
  w.writerow(["sample_id", *names])
  vals = np.stack(cols, 1)
  for i in range(len(ids)):
    w.writerow([int(ids[i]), *(f"{v:.7g}" for v in vals[i])])


def probe_csv(args) -> tuple[dict, str]:
  from esmjax.serving import prediction_files as pf

  names = ["pctr", "pcvr", "pctcvr"]
  ids, cols = _pred_rows(args.rows)
  variants = {
    "csv.writer loop": lambda: _csv_loop(io.StringIO(newline=""), names, ids, cols),
    "prediction_files.write_csv": lambda: pf.write_csv(io.BytesIO(), names, ids, cols),
    "prediction_files.write_parquet": lambda: pf.write_parquet(io.BytesIO(), names, ids, cols),
  }
  a, b = io.StringIO(newline=""), io.BytesIO()
  _csv_loop(a, names, ids, cols)
  pf.write_csv(b, names, ids, cols)
  assert a.getvalue().encode() == b.getvalue(), "the CSV bytes differ"
  secs: dict[str, list[float]] = {k: [] for k in variants}
  loads = []
  for _ in range(args.reps):
    for k, fn in variants.items():
      t = time.perf_counter()
      fn()
      secs[k].append(time.perf_counter() - t)
      loads.append(os.getloadavg()[0])
  rate = {k: args.rows / statistics.median(v) for k, v in secs.items()}
  base = rate["csv.writer loop"]
  rows = [[k, f"{rate[k]:,.0f}", f"{rate[k] / base:.2f}"] for k in variants]
  md = (
    f"Rows: {args.rows:,} (sample id + 3 float32 predictions), {args.reps} interleaved reps, "
    f"medians; the two CSV writers' bytes checked equal ({len(b.getvalue()):,} bytes).\n\n"
    + reporting.markdown_table(["writer", "rows/s", "vs csv.writer loop"], rows)
    + f"\n\nLoad average (1 min) during the reps: {min(loads):.1f}–{max(loads):.1f}.\n"
  )
  return {"rows": args.rows, "reps": args.reps, "seconds": secs, "rows_per_s": rate}, md


PROBES = {"csv": probe_csv}


def main(argv) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("probe", choices=sorted(PROBES))
  ap.add_argument("--rows", type=int, default=1_000_000)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default="experiments/results")
  args = ap.parse_args(argv)
  t0 = time.time()
  prov = reporting.provenance(reporting.command_line(argv, __file__))
  record, md = PROBES[args.probe](args)
  prov = reporting.finish(prov, t0)
  m = prov["machine"]
  header = (
    f"<!-- written by `{prov['command']}`; regenerate, do not edit -->\n"
    f"# Full-scale probe: {args.probe} (experiments/full_scale_probe.py)\n\n"
    f"Command: `{prov['command']}`. {reporting.code_line(prov)}Machine: {m['cpu']} "
    f"(bf16 flags: {', '.join(m['cpu_bf16_flags']) or 'none'}), {m['cores']} cores; load "
    f"average {prov['load_before']} before, {prov['load_after']} after; {prov['written_utc']}.\n\n"
  )
  reporting.write_results(
    args.out, f"full_scale_probe_{args.probe}", {**prov, **record}, md, header=header
  )
  print(header + md)
  return record


if __name__ == "__main__":
  main(sys.argv[1:])
