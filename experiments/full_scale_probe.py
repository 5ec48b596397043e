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
import tracemalloc

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


def _eval_rows(n: int, seed: int = 0):
  """evaluate's inputs as the full-scale predict stage holds them: float32 predictions, uint8
  labels, int64 users (~8 k-row groups of the hashed user ids), float32 ground truth."""
  rng = np.random.default_rng(seed)
  _, (pctr, pcvr, pctcvr) = _pred_rows(n, seed)
  click = (rng.random(n) < pctr).astype(np.uint8)
  buy = click & (rng.random(n) < 20 * pcvr).astype(np.uint8)
  truth_pcvr = np.clip(pcvr * 20, 0, 1).astype(np.float32)
  would_buy = np.maximum(buy, (rng.random(n) < 0.005).astype(np.uint8))
  preds = {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctcvr}
  labels = {"click": click, "buy": buy}
  users = rng.integers(0, max(n // 100, 1), n).astype(np.int64)
  return preds, labels, users, {"would_buy": would_buy, "pcvr": truth_pcvr}


def _peak(fn) -> tuple[float, int]:
  """(seconds, peak bytes allocated above what was held before) of fn()."""
  tracemalloc.start()
  tracemalloc.reset_peak()
  held = tracemalloc.get_traced_memory()[0]
  t = time.perf_counter()
  fn()
  secs = time.perf_counter() - t
  peak = tracemalloc.get_traced_memory()[1] - held
  tracemalloc.stop()
  return secs, peak


def _measure_evaluate(n: int, reps: int, names, secs, peaks, loads) -> tuple[int, float]:
  """Times and peaks of both evaluate paths on n rows, into secs / peaks / loads; returns (input
  bytes, largest difference of a metric between the paths)."""
  from esmjax.evaluation import metrics

  preds, labels, users, truth = _eval_rows(n)
  ones = np.ones(n)
  inputs = sum(a.nbytes for d in (preds, labels, truth) for a in d.values()) + users.nbytes
  variants = {
    # Weights of one take the general float64 path: evaluate as it was before ranking.py.
    names[0]: lambda: metrics.evaluate(preds, labels, users, weights=ones, truth=truth),
    names[1]: lambda: metrics.evaluate(preds, labels, users, truth=truth),
  }
  a, b = (variants[k]() for k in names)
  diff = max(abs(b[k] - v) for k, v in a.items() if v == v)
  for _ in range(reps):
    for k, fn in variants.items():
      t, p = _peak(fn)
      secs[k][n].append(t)
      peaks[k][n].append(p)
      loads.append(os.getloadavg()[0])
  return inputs, diff


def probe_metrics(args) -> tuple[dict, str]:
  sizes = (args.rows // 2, args.rows)
  full = 43_000_000
  names = ("float64 path (weights of one)", "ranked (no weights)")
  secs: dict[str, dict[int, list[float]]] = {k: {n: [] for n in sizes} for k in names}
  peaks: dict[str, dict[int, list[int]]] = {k: {n: [] for n in sizes} for k in names}
  loads, diff, inputs = [], 0.0, {}
  for n in sizes:
    inputs[n], d = _measure_evaluate(n, args.reps, names, secs, peaks, loads)
    diff = max(diff, d)
  rows, fits = [], {}
  per_input = inputs[sizes[1]] / sizes[1]
  for k in names:
    p0, p1 = (max(peaks[k][n]) for n in sizes)
    slope = (p1 - p0) / (sizes[1] - sizes[0])  # a + b·rows through the two sizes
    fits[k] = {"bytes_per_row": slope, "fixed_bytes": p1 - slope * sizes[1]}
    at_full = p1 + slope * (full - sizes[1]) + per_input * full
    rows.append(
      [k]
      + [f"{max(peaks[k][n]) / n:.1f}" for n in sizes]
      + [f"{slope:.1f}", f"{at_full / 1e9:.2f}"]
      + [f"{statistics.median(secs[k][n]):.2f}" for n in sizes]
    )
  md = (
    "`metrics.evaluate` on synthetic rows (3 float32 predictions, uint8 click/buy, int64 users, "
    f"float32 truth: {per_input:.0f} B/row of inputs) at two sizes, {args.reps} interleaved "
    "reps; peak memory allocated during the call above the inputs (tracemalloc, which sees "
    "NumPy's buffers; the largest of the reps), fitted as a + b·rows through the two sizes; "
    "times are medians. Largest difference between the two paths' metrics: "
    f"{diff:.2e}.\n\n"
    + reporting.markdown_table(
      ["path"]
      + [f"peak B/row at {n:,} rows" for n in sizes]
      + ["b: B/row", "43 M rows, with the inputs: GB"]
      + [f"seconds at {n:,} rows" for n in sizes],
      rows,
    )
    + f"\n\nLoad average (1 min) during the reps: {min(loads):.1f}–{max(loads):.1f}.\n"
  )
  record = {
    "sizes": sizes,
    "input_bytes_per_row": per_input,
    "peak_bytes": peaks,
    "seconds": secs,
    "fits": fits,
    "max_metric_difference": diff,
  }
  return record, md


PROBES = {"csv": probe_csv, "metrics": probe_metrics}


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
