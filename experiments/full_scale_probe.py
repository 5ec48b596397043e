r"""Probes of the full-scale path's per-row costs, each timed with its variants interleaved:

  python -m experiments.full_scale_probe csv [--rows=1000000] [--reps=3]
  python -m experiments.full_scale_probe metrics [--rows=6000000]
  python -m experiments.full_scale_probe train --workdir=WORKDIR [--models=esmm,base] [--steps=300]
  python -m experiments.full_scale_probe predict --workdir=WORKDIR [--models=esmm,base]

- csv: rows/s of the prediction CSV writer (`esmjax.serving.prediction_files.write_csv`) against
  the one-row-at-a-time `csv.writer` loop it replaces, on the same rows (bytes checked equal), and
  of the Parquet writer.
- metrics: peak memory per row of `esmjax.evaluation.metrics.evaluate` on synthetic rows shaped
  like the full-scale predict stage (3 float32 predictions, uint8 labels, int64 users, float32
  ground truth), measured with tracemalloc (NumPy reports its buffers to it), and its time.
- train: the trainer's examples/s against the same config's train step alone on pre-made device
  batches and against its input pipeline alone, on the converted training split of an
  `experiments.full_scale` workdir (the Ali-CCP schema: lz4 blocks, multi-valued fields).
- predict: the predict stage's parts (evaluation batches, predict step, the scoring loop) on the
  test split and trained models of an `experiments.full_scale` workdir.

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


# The full-scale target: the trainer's rate over its step's on pre-made batches.
TRAINER_TARGET = 0.9


def _timed_windows():
  """benchmarks' step timer (timed windows after a warm-up, one sync per chunk of steps)."""
  try:
    from benchmarks.harness.timing import timed_windows
  except ImportError:
    from benchmarks.common import timed_windows
  return timed_windows


def _trainer_rate(config, workdir: str) -> dict:
  """The trainer's own rate (summary.json's examples_per_sec: steps over training seconds,
  compilation, evaluation and checkpoints left out) for config.train.num_steps steps."""
  import shutil

  from esmjax import api

  shutil.rmtree(workdir, ignore_errors=True)
  summary = api.train(config, workdir)
  shutil.rmtree(workdir, ignore_errors=True)
  return {
    "ex_per_s": float(summary["examples_per_sec"]),
    "median_window": float(summary.get("examples_per_sec_median_window", float("nan"))),
  }


def _step_rate(config, train_ds, n_batches: int, seconds: float) -> dict:
  """The same config's jitted train step (core.run.Run.train_step, as the trainer compiles it)
  alone, on n_batches pre-made device batches the trainer's iterator yields, cycled."""
  import jax

  from esmjax.core import feed, steps
  from esmjax.core import run as run_lib
  from esmjax.core import sharding as sh

  run = run_lib.Run(config, train_ds.schema)
  it = feed.make_train_iter(config, train_ds)
  try:
    host = [next(it) for _ in range(n_batches)]
  finally:
    getattr(it, "close", lambda: None)()
  batches = [sh.put_batch({k: b[k] for k in steps.BATCH_KEYS}, run.mesh) for b in host]
  box = {"state": run.init_fn(), "m": None}

  def step(i):
    box["state"], box["m"] = run.train_step(box["state"], batches[i % len(batches)])

  _, rates, n = _timed_windows()(
    step,
    lambda: jax.block_until_ready(box["m"]),
    config.train.batch_size,
    warmup_s=seconds / 4,
    windows=3,
    window_s=seconds / 4,
  )
  return {"ex_per_s": statistics.median(rates), "windows": rates, "steps": n}


def _pipeline_rate(config, train_ds, seconds: float) -> dict:
  """The trainer's input iterator alone, drained as fast as it yields."""
  from esmjax.core import feed

  it = feed.make_train_iter(config, train_ds)
  try:
    _, rates, n = _timed_windows()(
      lambda i: next(it),
      lambda: None,
      config.train.batch_size,
      warmup_s=seconds / 4,
      windows=3,
      window_s=seconds / 4,
    )
  finally:
    getattr(it, "close", lambda: None)()
  return {"ex_per_s": statistics.median(rates), "windows": rates, "steps": n}


def probe_train(args) -> tuple[dict, str]:
  """The trainer's rate on a converted Ali-CCP world (`--workdir` of experiments.full_scale, its
  convert stages done) against its step alone on pre-made batches and its input pipeline alone,
  per model, interleaved."""
  from esmjax.data.format import dataset as ds_lib
  from experiments import full_scale_stages as st

  p = st.paths(args.workdir)
  train_ds = ds_lib.open_dataset(p["data_train"])
  res: dict[str, dict[str, list[dict]]] = {}
  loads = []
  for _ in range(args.reps):
    for model in args.models.split(","):
      config = st.model_config(model, args.workdir)
      config.train.num_steps = args.steps
      config.train.max_eval_rows = config.train.eval_batch_size  # one evaluation batch
      r = res.setdefault(model, {"trainer": [], "step": [], "pipeline": []})
      r["trainer"].append(_trainer_rate(config, os.path.join(args.workdir, f"probe_{model}")))
      r["step"].append(_step_rate(config, train_ds, args.n_batches, args.seconds))
      r["pipeline"].append(_pipeline_rate(config, train_ds, args.seconds))
      loads.append(os.getloadavg()[0])
  rows = []
  for model, r in res.items():
    med = {k: statistics.median(x["ex_per_s"] for x in v) for k, v in r.items()}
    rows.append(
      [
        model,
        f"{med['trainer']:,.0f}",
        f"{med['step']:,.0f}",
        f"{med['pipeline']:,.0f}",
        f"{med['trainer'] / med['step']:.2f}",
        f"{med['pipeline'] / med['step']:.1f}",
      ]
    )
    r["medians"] = med
  md = (
    f"Dataset: {p['data_train']} ({train_ds.num_rows:,} rows, the Ali-CCP converter's lz4 "
    f"blocks), batch {st.BATCH}, the shipped configs. Trainer: `esmjax.api.train`, "
    f"{args.steps} steps, its summary's examples_per_sec. Step: `core.run.Run.train_step` alone "
    f"on {args.n_batches} pre-made device batches from the trainer's iterator, cycled. Pipeline: "
    f"the trainer's iterator alone. {args.reps} interleaved reps, medians.\n\n"
    + reporting.markdown_table(
      ["model", "trainer ex/s", "step ex/s", "pipeline ex/s", "trainer / step", "pipeline / step"],
      rows,
    )
    + f"\n\nLoad average (1 min) after each model: {', '.join(f'{x:.1f}' for x in loads)}.\n"
  )
  met = {
    m: r["medians"]["trainer"] >= TRAINER_TARGET * r["medians"]["step"] for m, r in res.items()
  }
  md += (
    f"\nTarget, the trainer at ≥ {TRAINER_TARGET:.0%} of its step's rate on pre-made batches: "
    + "; ".join(f"{m} {'met' if ok else 'not met'}" for m, ok in met.items())
    + ".\n"
  )
  return {"workdir": args.workdir, "rows": train_ds.num_rows, "results": res}, md


def _rate(fn, rows: int) -> float:
  t = time.perf_counter()
  fn()
  return rows / (time.perf_counter() - t)


def probe_predict(args) -> tuple[dict, str]:
  """Where the predict stage's time goes, per model: the evaluation batches alone (read, lz4
  decode, rebatch, pad), the jitted predict step alone on pre-made device batches, and the two in
  series and overlapped (`esmjax.evaluation.scoring.predict_dataset`), on the converted test split
  of an experiments.full_scale workdir, trained models from its runs."""
  import jax

  from esmjax.core import sharding as sh
  from esmjax.core.steps import BATCH_KEYS
  from esmjax.data.format import dataset as ds_lib
  from esmjax.data.pipeline import batches as pipeline
  from esmjax.evaluation import scoring
  from esmjax.serving import predict
  from experiments import full_scale_stages as st

  p = st.paths(args.workdir)
  ds = ds_lib.open_dataset(p["data_test"])
  bs, n_rows = st.EVAL_BATCH, ds.num_rows
  res: dict[str, dict[str, list[float]]] = {}
  loads = []
  for model in args.models.split(","):
    run, state = predict.load(p[f"run_{model}"], st.model_config(model, args.workdir))
    step = predict.jit_predict_step(run)
    pre = []
    for b, _ in pipeline.eval_batches(ds, bs):
      pre.append(sh.put_batch({k: b[k] for k in BATCH_KEYS}, run.mesh))
      if len(pre) == args.n_batches:
        break
    jax.block_until_ready(step(state, pre[0]))  # compiled

    def step_only(step=step, state=state, pre=pre):
      for i in range(-(-n_rows // bs)):
        out = step(state, pre[i % len(pre)])
      jax.block_until_ready(out)

    def batches_only():
      for _ in pipeline.eval_batches(ds, bs):
        pass

    def scoring_loop(step=step, state=state, run=run):
      scoring.predict_dataset(step, state, ds, bs, run.mesh)

    variants = {"batches": batches_only, "step": step_only, "predict_dataset": scoring_loop}
    r = res.setdefault(model, {k: [] for k in variants})
    for _ in range(args.reps):
      for k, fn in variants.items():
        r[k].append(_rate(fn, n_rows))
        loads.append(os.getloadavg()[0])
    del run, state, pre
  rows = []
  for model, r in res.items():
    med = {k: statistics.median(v) for k, v in r.items()}
    serial = 1 / (1 / med["batches"] + 1 / med["step"])
    rows.append(
      [model]
      + [f"{med[k]:,.0f}" for k in ("batches", "step", "predict_dataset")]
      + [f"{serial:,.0f}", f"{med['predict_dataset'] / med['step']:.2f}"]
    )
  md = (
    f"Test split {p['data_test']} ({n_rows:,} rows), evaluation batch {bs:,}, models of "
    f"{p['runs']}; {args.reps} interleaved reps, medians, rows/s.\n\n"
    + reporting.markdown_table(
      [
        "model",
        "batches alone",
        "predict step alone",
        "predict_dataset",
        "in series (1 / (1/a + 1/b))",
        "predict_dataset / step",
      ],
      rows,
    )
    + f"\n\nLoad average (1 min) during the reps: {min(loads):.1f}–{max(loads):.1f}.\n"
  )
  return {"workdir": args.workdir, "rows": n_rows, "rows_per_s": res}, md


PROBES = {
  "csv": probe_csv,
  "metrics": probe_metrics,
  "train": probe_train,
  "predict": probe_predict,
}


def main(argv) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("probe", choices=sorted(PROBES))
  ap.add_argument("--rows", type=int, default=1_000_000)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default="experiments/results")
  ap.add_argument("--workdir", default="", help="train: an experiments.full_scale workdir")
  ap.add_argument("--models", default="esmm,base", help="train: models, comma-separated")
  ap.add_argument("--steps", type=int, default=300, help="train: the trainer's steps")
  ap.add_argument("--n_batches", type=int, default=16, help="train: pre-made batches")
  ap.add_argument("--seconds", type=float, default=12.0, help="train: seconds per step timing")
  args = ap.parse_args(argv)
  if args.probe in ("train", "predict"):
    from experiments import full_scale_stages as st

    need = os.path.join(st.paths(args.workdir)["data_train"], "manifest.json")
    if not args.workdir or not os.path.exists(need):
      from esmjax import exits

      exits.fail(
        f"full_scale_probe {args.probe}: needs --workdir, an experiments.full_scale workdir whose "
        f"convert stages finished ({need} is missing)",
        exits.USER_ERROR,
      )
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
