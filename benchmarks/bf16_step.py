r"""Mixed precision on the train step: float32 against bf16 towers (and bf16 tables), interleaved.

    python benchmarks/bf16_step.py [--quick] [--rounds=2] [--out_dir=benchmarks/results]

Each configuration (model, batch) runs its variants in separate worker processes, one after the
other, `--rounds` times in turn, so a shared machine's load falls on all of them alike; the
table gives medians and each variant's ratio to float32 within the same rounds. Variants:
  float32              model.dtype=float32, embedding.dtype=float32 (the reference)
  bf16_towers          model.dtype=bfloat16 (bf16 operands, f32 accumulation, f32 master weights)
  bf16_towers_tables   model.dtype=bfloat16 and embedding.dtype=bfloat16 (rows stored in bf16)
Paper sizes (23 fields × 18, towers 200-80-1), 1e5 table rows, Zipf ids, rowwise Adagrad.
Writes bf16_step.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from esmjax import reporting

VARIANTS = {
  "float32": ("float32", "float32"),
  "bf16_towers": ("bfloat16", "float32"),
  "bf16_towers_tables": ("bfloat16", "bfloat16"),
}


def step_worker(spec: dict) -> dict:
  """One (model, batch, dtypes) train step timed on pre-generated batches."""
  import jax

  from esmjax import config as config_lib
  from esmjax import sharding as sh
  from esmjax import steps, trainer

  schema = common.paper_schema(spec["rows"])
  cfg = common.bench_config(spec["model"], spec["batch"])
  cfg.model.dtype, cfg.embedding.dtype = spec["model_dtype"], spec["table_dtype"]
  cfg = config_lib.validate(cfg)
  mesh = sh.make_mesh(1)
  run = trainer.Run(cfg, schema, mesh=mesh)
  box = {"state": run.init_fn(), "m": None}
  host = common.zipf_batches(schema, spec["batch"], 8)
  batches = [sh.put_batch({k: b[k] for k in steps.BATCH_KEYS}, mesh) for b in host]

  def step(i):
    box["state"], box["m"] = run.train_step(box["state"], batches[i % len(batches)])

  first, rates, n = common.spec_windows(spec, step, lambda: jax.block_until_ready(box["m"]))
  return {"ex_per_s": rates, "first_step_s": first, "loss": float(box["m"]["loss"])}


def markdown(res: dict) -> str:
  m = res["machine"]
  rows = []
  for c in res["configs"]:
    for v in VARIANTS:
      r = c["variants"][v]
      rows.append([c["model"], c["batch"], v, r["median_ex_per_s"], r["ratio_to_float32"]])
  return (
    f"# bf16 train step ({res['when']})\n\n"
    f"Machine: {m['cpu']} (bf16 flags: {', '.join(m['cpu_bf16_flags']) or 'none'}), "
    f"{m['cores']} cores; load {res['load_before']} before, {res.get('load_after')} after. "
    f"{res['rounds']} interleaved rounds; medians of {res['windows']} windows per run.\n\n"
    + reporting.markdown_table(["model", "batch", "variant", "ex/s", "× float32"], rows)
    + "\n\nRegenerate: `python benchmarks/bf16_step.py`.\n"
  )


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--quick", action="store_true", help="one model, shorter windows")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--out_dir", default=str(common.RESULTS))
  args = ap.parse_args(argv)
  t0 = time.time()
  prov = reporting.provenance()
  configs = [("esmm", 1024), ("esmm", 4096)] + ([] if args.quick else [("esm2", 1024)])
  w = dict(windows=3, window_s=1.5 if args.quick else 3.0, warmup_s=1.0, rows=100_000)
  me = Path(__file__).resolve()
  out = []
  for model, batch in configs:
    rates = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
      for v, (md, td) in VARIANTS.items():
        spec = dict(kind="step", model=model, batch=batch, model_dtype=md, table_dtype=td, **w)
        r = common.run_worker(me, spec)
        if "error" in r:
          print(v, r["error"][-500:], file=sys.stderr)
        rates[v].append(statistics.median(r.get("ex_per_s") or [float("nan")]))
        print(model, batch, v, f"{rates[v][-1]:,.0f} ex/s", flush=True)
    per_round = [
      {v: rates[v][i] / rates["float32"][i] for v in VARIANTS} for i in range(args.rounds)
    ]
    out.append(
      {
        "model": model,
        "batch": batch,
        "variants": {
          v: {
            "ex_per_s": rates[v],
            "median_ex_per_s": statistics.median(rates[v]),
            "ratio_to_float32": statistics.median(r[v] for r in per_round),
          }
          for v in VARIANTS
        },
      }
    )
  res = {**prov, "rounds": args.rounds, "windows": w["windows"], "configs": out}
  res = reporting.finish(res, t0)
  md = markdown(res)
  reporting.write_results(Path(args.out_dir), "bf16_step", res, md)
  print(md)


if __name__ == "__main__":
  if not common.worker_main({"step": step_worker}):
    main()
