r"""Mixed precision on the train step: float32 against bf16 towers (and bf16 tables), interleaved.

    python benchmarks/bf16_step.py [--quick] [--windows=9] [--out_dir=benchmarks/results]

Each configuration (model, batch) runs in one worker process that builds every variant's step and
times them in alternating windows, so a shared machine's load falls on all of them alike; the
table gives medians and each variant's median ratio to float32 over adjacent windows. Variants:
  float32              model.dtype=float32, embedding.dtype=float32 (the reference)
  bf16_towers          model.dtype=bfloat16 (bf16 operands, f32 accumulation, f32 master weights)
  bf16_towers_tables   model.dtype=bfloat16 and embedding.dtype=bfloat16 (rows stored in bf16)
Paper sizes (23 fields × 18, towers 200-80-1), 1e5 table rows, Zipf ids, rowwise Adagrad.
Writes bf16_step.{json,md}.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import harness
import reporting

VARIANTS = {
  "float32": ("float32", "float32"),
  "bf16_towers": ("bfloat16", "float32"),
  "bf16_towers_tables": ("bfloat16", "bfloat16"),
}


def step_worker(spec: dict) -> dict:
  """Every variant's train step for one (model, batch), built in this process and timed in
  alternating windows (A B C A B C ...), so the machine's load falls on all of them alike."""
  import jax

  from esmjax.config import defaults as config_lib
  from esmjax.core import sharding as sh
  from esmjax.core import steps
  from esmjax.training import trainer

  schema = common.paper_schema(spec["rows"])
  mesh = sh.make_mesh(1)
  host = common.zipf_batches(schema, spec["batch"], 8)
  batches = [sh.put_batch({k: b[k] for k in steps.BATCH_KEYS}, mesh) for b in host]
  boxes = {}
  for v, (md, td) in VARIANTS.items():
    cfg = common.bench_config(spec["model"], spec["batch"])
    cfg.model.dtype, cfg.embedding.dtype = md, td
    run = trainer.Run(config_lib.validate(cfg), schema, mesh=mesh)
    box = {"run": run, "state": run.init_fn(), "m": None, "i": 0}
    for _ in range(3):  # compile and warm up
      box["state"], box["m"] = run.train_step(box["state"], batches[0])
    jax.block_until_ready(box["m"])
    boxes[v] = box
  rates = {v: [] for v in VARIANTS}
  cpu = {v: [] for v in VARIANTS}
  for _ in range(spec["windows"]):
    for v, box in boxes.items():
      n, t0, c0 = 0, time.perf_counter(), time.process_time()
      while n < 2 or time.perf_counter() - t0 < spec["window_s"]:
        for _ in range(4):
          box["state"], box["m"] = box["run"].train_step(box["state"], batches[box["i"] % 8])
          box["i"] += 1
          n += 1
        jax.block_until_ready(box["m"])
      rates[v].append(n * spec["batch"] / (time.perf_counter() - t0))
      cpu[v].append(n * spec["batch"] / max(time.process_time() - c0, 1e-9))
  return {
    "ex_per_s": rates,
    "ex_per_cpu_s": cpu,
    "loss": {v: float(b["m"]["loss"]) for v, b in boxes.items()},
  }


def markdown(res: dict) -> str:
  m = res["machine"]
  rows = []
  for c in res["configs"]:
    for v in VARIANTS:
      r = c["variants"][v]
      rows.append(
        [
          c["model"],
          c["batch"],
          v,
          r["median_ex_per_s"],
          r["ratio_to_float32"],
          r["median_ex_per_cpu_s"],
          r["cpu_ratio_to_float32"],
        ]
      )
  return (
    f"# bf16 train step ({res['when']})\n\n"
    f"Machine: {m['cpu']} (bf16 flags: {', '.join(m['cpu_bf16_flags']) or 'none'}), "
    f"{m['cores']} cores; load {res['load_before']} before, {res.get('load_after')} after. "
    f"All variants in one process per row group, timed in alternating {res['window_s']} s "
    f"windows ({res['windows']} each); medians, and the median ratio of adjacent windows. "
    "ex/CPU-s counts examples per CPU-second of the process (all its threads): on an "
    "oversubscribed machine it measures a step's work whatever share of the cores it got.\n\n"
    + reporting.markdown_table(
      ["model", "batch", "variant", "ex/s", "× float32", "ex/CPU-s", "× float32 (CPU-s)"], rows
    )
    + "\n\nRegenerate: `python benchmarks/bf16_step.py`.\n"
  )


@dataclasses.dataclass
class Opts(harness.Options):
  quick: bool = harness.opt(False, "one model, shorter windows")
  windows: int = harness.opt(9, "timed windows per variant")


def main(argv=None):
  args = harness.parse(Opts, argv, __doc__)
  t0 = time.time()
  prov = reporting.provenance()
  configs = [("esmm", 1024), ("esmm", 4096)] + ([] if args.quick else [("esm2", 1024)])
  w = dict(windows=args.windows, window_s=1.0 if args.quick else 2.0, rows=100_000)
  me = Path(__file__).resolve()
  out = []
  for model, batch in configs:
    r = common.run_worker(me, dict(kind="step", model=model, batch=batch, **w), timeout=1800)
    if "error" in r:
      print(model, batch, r["error"][-800:], file=sys.stderr)
      continue
    # Ratio to float32 per window pair (adjacent in time), then the median.
    ratio = {
      v: statistics.median(
        a / b for a, b in zip(r["ex_per_s"][v], r["ex_per_s"]["float32"], strict=True)
      )
      for v in VARIANTS
    }
    cpu_ratio = {
      v: statistics.median(
        a / b for a, b in zip(r["ex_per_cpu_s"][v], r["ex_per_cpu_s"]["float32"], strict=True)
      )
      for v in VARIANTS
    }
    variants = {
      v: {
        "ex_per_s": r["ex_per_s"][v],
        "median_ex_per_s": statistics.median(r["ex_per_s"][v]),
        "ratio_to_float32": ratio[v],
        "median_ex_per_cpu_s": statistics.median(r["ex_per_cpu_s"][v]),
        "cpu_ratio_to_float32": cpu_ratio[v],
        "final_loss": r["loss"][v],
      }
      for v in VARIANTS
    }
    out.append({"model": model, "batch": batch, "variants": variants})
    for v in VARIANTS:
      print(model, batch, v, {k: x for k, x in variants[v].items() if k != "ex_per_s"}, flush=True)
  res = {**prov, "windows": w["windows"], "window_s": w["window_s"], "configs": out}
  res = reporting.finish(res, t0)
  md = markdown(res)
  reporting.write_results(Path(args.out_dir), "bf16_step", res, md)
  print(md)


if __name__ == "__main__":
  if not common.worker_main({"step": step_worker}):
    main()
