r"""The CPU defaults re-measured end to end: `python -m esmjax.main`, one knob changed at a time.

    python benchmarks/cpu_defaults.py [--quick] [--rounds=2] [--variants=shipped,spd1,...]

Each variant is the shipped config (configs/esmm.py, configs/esm2.py on the default synthetic
world, batch 1,024) with one setting changed; every run is a fresh `python -m esmjax.main`
process, as a user starts it (so the huge-page malloc restart and model.dtype=auto happen as they
do for a user). Rounds interleave the variants (the order reversed every other round) so a shared
machine's load falls on all alike. Reported: the run's training rate (summary.json
`examples_per_sec`: examples over the training loop's wall time, compile excluded), median over
rounds, and the median over rounds of each round's ratio to that round's `shipped`.
Writes cpu_defaults.{json,md}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import harness
import reporting

# name -> (config overrides, environment): one knob away from the shipped defaults.
VARIANTS = {
  "shipped": ({}, {}),
  "float32": ({"model.dtype": "float32"}, {}),
  "bfloat16": ({"model.dtype": "bfloat16"}, {}),
  "spd1": ({"train.steps_per_dispatch": 1}, {}),
  "spd4": ({"train.steps_per_dispatch": 4}, {}),
  "spd16": ({"train.steps_per_dispatch": 16}, {}),
  "no_huge_page_malloc": ({}, {"ESMJAX_HUGE_PAGE_MALLOC": "0"}),
  "unfused_towers": ({"model.fuse_towers": False}, {}),
  # Two knobs: whether the huge-page malloc cost depends on the towers' dtype.
  "float32_no_huge_page_malloc": ({"model.dtype": "float32"}, {"ESMJAX_HUGE_PAGE_MALLOC": "0"}),
}
MODELS = ("esmm", "esm2")


def main_job(model: str, overrides: dict, env: dict, steps: int, eval_rows: int, root: str):
  """One `python -m esmjax.main` run -> its summary (examples_per_sec, ...) or {'error': ...}."""
  workdir = tempfile.mkdtemp(prefix=f"{model}-", dir=root)
  flag = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
  cmd = [
    sys.executable,
    "-m",
    "esmjax.main",
    f"--config={common.ROOT / 'configs' / f'{model}.py'}",
    f"--workdir={workdir}",
    f"--config.train.num_steps={steps}",
    f"--config.train.max_eval_rows={eval_rows}",
    "--config.checkpoint.enabled=False",
    *(f"--config.{k}={flag(v)}" for k, v in overrides.items()),
  ]
  run_env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # as a user's shell
  run_env.update(env)
  t = time.perf_counter()
  p = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=1800)
  wall = time.perf_counter() - t
  try:
    with open(os.path.join(workdir, "summary.json")) as f:
      s = json.load(f)
  except OSError:
    return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-800:]}"}
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  log = p.stderr + p.stdout
  return {
    "examples_per_sec": float(s["examples_per_sec"]),
    "steps": int(s["steps"]),
    "wall_s": wall,
    "auto_line": next(
      (ln[ln.index("model.dtype=auto") :].strip() for ln in log.splitlines() if "dtype=auto" in ln),
      "",
    ),
  }


def summarize(rounds: list[dict], variants: list[str]) -> dict:
  out = {}
  for model in {m for rnd in rounds for m in rnd}:
    per = {}
    for v in variants:
      rates, ratios = [], []
      for rnd in rounds:
        r, base = rnd.get(model, {}).get(v), rnd.get(model, {}).get("shipped")
        if r and "error" not in r:
          rates.append(r["examples_per_sec"])
          if base and "error" not in base:
            ratios.append(r["examples_per_sec"] / base["examples_per_sec"])
      if rates:
        per[v] = {
          "rates": rates,
          "median_ex_per_s": statistics.median(rates),
          "ratios": ratios,
          "ratio_to_shipped": statistics.median(ratios) if ratios else float("nan"),
        }
    out[model] = per
  return out


def markdown(res: dict) -> str:
  m = res["machine"]
  rows = [
    [model, v, f"{e['median_ex_per_s']:,.0f}", f"{e['ratio_to_shipped']:.3f}", len(e["rates"])]
    for model, per in sorted(res["results"].items())
    for v, e in per.items()
  ]
  desc = "\n".join(
    f"- `{v}`: "
    + (
      ", ".join([f"--config.{k}={x}" for k, x in o.items()] + [f"{k}={x}" for k, x in e.items()])
      or "the shipped config"
    )
    for v, (o, e) in VARIANTS.items()
    if v in res["variants"]
  )
  return (
    f"# The CPU defaults, end to end ({res['when']})\n\n"
    f"Machine: {m['cpu']} (bf16 flags: {', '.join(m['cpu_bf16_flags']) or 'none'}), "
    f"{m['cores']} cores; load {res['load_before']} before, {res.get('load_after')} after. "
    f"`python -m esmjax.main --config=configs/<model>.py` on the default synthetic world, batch "
    f"1,024, {res['steps']} steps, eval on {res['eval_rows']:,} rows, one fresh process per run; "
    f"{res['rounds']} interleaved rounds. ex/s: summary.json `examples_per_sec` (training loop, "
    "compile excluded), median over rounds; × shipped: median over rounds of the ratio to that "
    f"round's shipped run. Shipped here: {res['auto_line'] or 'model.dtype as configured'}.\n\n"
    + reporting.markdown_table(["model", "variant", "ex/s", "× shipped", "runs"], rows)
    + f"\n\nVariants (one knob away from the shipped config):\n{desc}\n\n"
    f"Regenerate: `{res.get('command', 'python benchmarks/cpu_defaults.py')}`.\n"
  )


@dataclasses.dataclass
class Opts(harness.Options):
  quick: bool = harness.opt(False, "ESMM, 2 variants, 30 steps")
  rounds: int = 2
  steps: int = harness.opt(400, "train steps of each main job")
  eval_rows: int = harness.opt(16384, "evaluation rows of each main job")
  variants: str = harness.opt(",".join(VARIANTS), "comma-separated variants")
  models: str = harness.opt(",".join(MODELS), "comma-separated shipped configs")
  name: str = harness.opt("cpu_defaults", "results file name")


def main(argv=None):
  args = harness.parse(Opts, argv, __doc__)
  variants = harness.subset("variants", args.variants, list(VARIANTS))
  variants = ["shipped", *[v for v in variants if v != "shipped"]]
  models = [m for m in args.models.split(",") if m]
  if args.quick:
    models, variants, args.steps, args.eval_rows = ["esmm"], ["shipped", "float32"], 30, 2048
  t0 = time.time()
  prov = reporting.provenance()
  root = tempfile.mkdtemp(prefix="esmjax-cpu-defaults-")
  rounds, auto_line = [], ""
  try:
    for r in range(args.rounds):
      rnd = {}
      order = variants if r % 2 == 0 else list(reversed(variants))
      for model in models:
        for v in order:
          o, e = VARIANTS[v]
          out = main_job(model, o, e, args.steps, args.eval_rows, root)
          rnd.setdefault(model, {})[v] = out
          auto_line = auto_line or (out.get("auto_line", "") if v == "shipped" else "")
          print(
            f"round {r} {model} {v}: "
            + (f"{out['examples_per_sec']:,.0f} ex/s" if "error" not in out else out["error"]),
            flush=True,
          )
      rounds.append(rnd)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  res = {
    **prov,
    "steps": args.steps,
    "eval_rows": args.eval_rows,
    "rounds": args.rounds,
    "variants": variants,
    "overrides": {v: VARIANTS[v][0] for v in variants},
    "env": {v: VARIANTS[v][1] for v in variants},
    "auto_line": auto_line,
    "raw": rounds,
    "results": summarize(rounds, variants),
  }
  res = reporting.finish(res, t0)
  md = markdown(res)
  reporting.write_results(Path(args.out_dir), args.name, res, md)
  print(md)


if __name__ == "__main__":
  main()
