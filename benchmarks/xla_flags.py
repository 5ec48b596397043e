r"""XLA:CPU flag sets (oneDNN, XNNPACK, YNNPACK, vector width) on the train step, per batch size.

    python benchmarks/xla_flags.py [--quick] [--rounds=2] [--sets=none,onednn_dot,...]

XLA flags are process-global and read once when the backend starts, so every flag set runs in its
own worker process (XLA_FLAGS set before JAX starts). First each candidate set is probed in a
subprocess (an unknown flag or value aborts XLA; a set that fails is reported, not timed). Then in
each round every accepted set's worker builds the step of every (model, dtype, batch) and times
each in alternating windows; rounds interleave the sets, so the machine's load falls on all
alike. Reported: per step, each set's median ex/s and its median ratio to `none` (no flags) over
the rounds (each round's ratio is against that round's `none`); a set pays on a step only where it
is at least --threshold in every round.
Steps: paper sizes (23 fields × 18, towers 200-80-1; ESMM and ESM2 as configs/esmm.py and
configs/esm2.py train them), 1e5 table rows, Zipf ids, row-wise Adagrad; f32 and bf16 towers
(model.dtype=bfloat16, tables f32: what model.dtype=auto trains on a CPU with bf16 units).
Writes xla_flags.{json,md} (`--name` for another CPU's record).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import harness
import reporting

# name -> XLA_FLAGS (each probed first: the installed jaxlib may not know a flag or value).
FLAG_SETS = {
  "none": "",
  "onednn_dot": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=DOT",
  "onednn_dot_eltwise": (
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=DOT,ELTWISE"
  ),
  "xnn_dot": "--xla_cpu_use_xnnpack=true --xla_cpu_experimental_xnn_fusion_type=DOT",
  "xnn_graph_greedy": (
    "--xla_cpu_use_xnnpack=true "
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
  ),
  "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=DOT",
  "ynn_dot_eltwise": "--xla_cpu_experimental_ynn_fusion_type=DOT,ELTWISE,REDUCE",
  "vector_width_512": "--xla_cpu_prefer_vector_width=512",
}
MODELS = ("esmm", "esm2")
DTYPES = ("float32", "bfloat16")
BATCHES = (1024, 4096)
PROBE = (
  "import jax, jax.numpy as jnp\n"
  "x = jnp.ones((64, 48)); w = jnp.ones((48, 32))\n"
  "f = jax.jit(lambda x, w: jax.nn.relu(jnp.dot(x, w)).sum() + jnp.dot(x.astype(jnp.bfloat16),"
  " w.astype(jnp.bfloat16), preferred_element_type=jnp.float32).sum())\n"
  "print(float(f(x, w)))\n"
)


def probe(flags: str) -> str:
  """'' if XLA accepts `flags` (a jitted f32 and bf16 dot compile and run), else why not."""
  env = common.worker_env(extra={"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"})
  try:
    p = subprocess.run(
      [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
  except subprocess.TimeoutExpired:
    return "probe timed out"
  if p.returncode == 0 and p.stdout.strip() == str(float(64 * 32 * 48 * 2)):
    return ""
  lines = [ln.strip() for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
  why = [ln for ln in lines if any(w in ln.lower() for w in ("unknown", "invalid", "error"))]
  return f"exit {p.returncode}: " + ((why or lines or ["no output"])[-1][:300])


def step_worker(spec: dict) -> dict:
  """Every (model, dtype, batch) step under this process's XLA_FLAGS, timed in alternating
  windows; ex/s per step and window."""
  import jax

  from esmjax.config import defaults as config_lib
  from esmjax.core import sharding as sh
  from esmjax.core import steps
  from esmjax.training import trainer

  schema = common.paper_schema(spec["rows"])
  mesh = sh.make_mesh(1)
  boxes = {}
  t0 = time.perf_counter()
  for model, dtype, batch in spec["steps"]:
    host = common.zipf_batches(schema, batch, 4)
    batches = [sh.put_batch({k: b[k] for k in steps.BATCH_KEYS}, mesh) for b in host]
    cfg = common.bench_config(model, batch)
    cfg.model.dtype, cfg.embedding.dtype = dtype, "float32"
    run = trainer.Run(config_lib.validate(cfg), schema, mesh=mesh)
    box = {"run": run, "state": run.init_fn(), "m": None, "i": 0, "b": batches, "n": batch}
    for _ in range(3):  # compile and warm up
      box["state"], box["m"] = run.train_step(box["state"], batches[0])
    jax.block_until_ready(box["m"])
    boxes[f"{model}/{dtype}/{batch}"] = box
  compile_s = time.perf_counter() - t0
  rates = {k: [] for k in boxes}
  for _ in range(spec["windows"]):
    for k, box in boxes.items():
      n, t = 0, time.perf_counter()
      while n < 2 or time.perf_counter() - t < spec["window_s"]:
        for _ in range(2):
          box["state"], box["m"] = box["run"].train_step(box["state"], box["b"][box["i"] % 4])
          box["i"] += 1
          n += 1
        jax.block_until_ready(box["m"])
      rates[k].append(n * box["n"] / (time.perf_counter() - t))
  return {
    "ex_per_s": rates,
    "loss": {k: float(b["m"]["loss"]) for k, b in boxes.items()},
    "compile_s": compile_s,
  }


def summarize(rounds: list[dict[str, dict]], sets: list[str]) -> dict[str, dict]:
  """{step: {set: {median_ex_per_s, ratio_to_none, ratios}}}: each round's median window rate,
  its ratio to that round's `none`, and the median over rounds."""
  out: dict[str, dict] = {}
  for rnd in rounds:
    base = rnd.get("none", {}).get("ex_per_s", {})
    for s in sets:
      r = rnd.get(s, {}).get("ex_per_s")
      if not r:
        continue
      for step, xs in r.items():
        e = out.setdefault(step, {}).setdefault(s, {"rates": [], "ratios": []})
        e["rates"].append(statistics.median(xs))
        if step in base:
          e["ratios"].append(statistics.median(xs) / statistics.median(base[step]))
  for per in out.values():
    for e in per.values():
      e["median_ex_per_s"] = statistics.median(e["rates"])
      e["ratio_to_none"] = statistics.median(e["ratios"]) if e["ratios"] else float("nan")
  return out


def markdown(res: dict) -> str:
  m = res["machine"]
  sets = res["timed_sets"]
  rows = []
  for step, per in res["steps"].items():
    model, dtype, batch = step.split("/")
    rows.append(
      [model, dtype, batch]
      + [
        f"{per[s]['median_ex_per_s']:,.0f} ({per[s]['ratio_to_none']:.2f}×)" if s in per else "–"
        for s in sets
      ]
    )
  flags = "\n".join(f"- `{s}`: `{FLAG_SETS[s] or '(no XLA_FLAGS)'}`" for s in sets)
  refused = "\n".join(f"- `{s}` (`{FLAG_SETS[s]}`): {why}" for s, why in res["refused"].items())
  best = "\n".join(f"- {line}" for line in res["verdict"])
  return (
    f"# XLA:CPU flag sets on the train step ({res['when']})\n\n"
    f"Machine: {m['cpu']} (bf16 flags: {', '.join(m['cpu_bf16_flags']) or 'none'}), "
    f"{m['cores']} cores; jaxlib {res['jaxlib']}; load {res['load_before']} before, "
    f"{res.get('load_after')} after. Each set in its own process, {res['rounds']} interleaved "
    f"rounds, {res['windows']} alternating {res['window_s']} s windows per step per round; "
    "ex/s = median over rounds of each round's median window; (×) = median over rounds of "
    "the ratio to that round's `none`.\n\n"
    + reporting.markdown_table(["model", "towers", "batch", *sets], rows)
    + f"\n\nFlag sets timed:\n{flags}\n\n"
    + (f"Refused by this jaxlib (probe):\n{refused}\n\n" if refused else "")
    + f"Verdict (a set pays on a step where it is ≥ {res['threshold']:.2f}× in every round; a "
    "median ratio far from the lowest one marks a round whose `none` ran under load):\n"
    f"{best}\n\n"
    f"Regenerate: `{res.get('command', 'python benchmarks/xla_flags.py')}`.\n"
  )


def verdict(steps: dict[str, dict], sets: list[str], threshold: float) -> list[str]:
  """One line per set: the steps it pays on, judged on its *lowest* ratio over rounds. Each round
  runs every set in its own process, so a load spike during one `none` run lifts that round's
  every ratio; the median of two rounds is their mean and would let one such spike decide."""
  lines = []
  for s in sets:
    if s == "none":
      continue
    lows = {k: min(per[s]["ratios"]) for k, per in steps.items() if s in per and per[s]["ratios"]}
    if not lows:
      continue
    pays = [k for k, r in lows.items() if r >= threshold]
    worst = min(lows, key=lows.get)
    lines.append(
      f"`{s}`: pays on {', '.join(pays) if pays else 'no step'}; lowest ratio per step "
      f"{min(lows.values()):.2f}–{max(lows.values()):.2f}× (worst {worst})"
    )
  return lines


@dataclasses.dataclass
class Opts(harness.Options):
  quick: bool = harness.opt(False, "ESMM f32+bf16 at 1024, short windows")
  rounds: int = 2
  windows: int = harness.opt(3, "timed windows per step per round")
  window_s: float = 1.5
  sets: str = harness.opt("", f"comma-separated subset of {','.join(FLAG_SETS)} (default all)")
  models: str = harness.opt(",".join(MODELS), "comma-separated models")
  batches: str = harness.opt(",".join(map(str, BATCHES)), "comma-separated batch sizes")
  threshold: float = harness.opt(1.05, "the speed-up over no flags that counts as paying")
  name: str = harness.opt("xla_flags", "results file name (one per CPU: xla_flags_<cpu>)")
  render_only: bool = harness.opt(False, "rejudge and rewrite the .md from the .json in --out_dir")


def main(argv=None):
  args = harness.parse(Opts, argv, __doc__)
  if args.render_only:
    path = Path(args.out_dir) / f"{args.name}.json"
    res = json.loads(path.read_text())
    res["verdict"] = verdict(res["steps"], res["timed_sets"], res["threshold"])
    reporting.write_results(Path(args.out_dir), args.name, res, markdown(res))
    return
  t0 = time.time()
  prov = reporting.provenance()
  import jaxlib

  wanted = harness.subset("sets", args.sets or ",".join(FLAG_SETS), list(FLAG_SETS))
  wanted = ["none", *[s for s in wanted if s != "none"]]
  models = [m for m in args.models.split(",") if m]
  batches = [int(b) for b in args.batches.split(",") if b]
  if args.quick:
    models, batches, args.windows, args.window_s = ["esmm"], [1024], 2, 0.5
  step_list = [(m, d, b) for m in models for d in DTYPES for b in batches]
  refused = {}
  for s in wanted:
    why = probe(FLAG_SETS[s]) if FLAG_SETS[s] else ""
    print(f"probe {s}: {why or 'accepted'}", flush=True)
    if why:
      refused[s] = why
  sets = [s for s in wanted if s not in refused]
  me = Path(__file__).resolve()
  rounds = []
  for r in range(args.rounds):
    rnd = {}
    for s in sets if r % 2 == 0 else [sets[0], *reversed(sets[1:])]:
      spec = dict(
        kind="step", steps=step_list, windows=args.windows, window_s=args.window_s, rows=100_000
      )
      env = common.worker_env(extra={"XLA_FLAGS": FLAG_SETS[s]})
      out = common.run_worker(me, spec, env=env, timeout=1800)
      if "error" in out:
        print(f"round {r} {s}: {out['error'][-600:]}", file=sys.stderr, flush=True)
        continue
      rnd[s] = out
      print(
        f"round {r} {s}: "
        + ", ".join(f"{k} {statistics.median(v):,.0f}" for k, v in out["ex_per_s"].items()),
        flush=True,
      )
    rounds.append(rnd)
  steps = summarize(rounds, sets)
  res = {
    **prov,
    "jaxlib": jaxlib.__version__,
    "flag_sets": FLAG_SETS,
    "timed_sets": sets,
    "refused": refused,
    "rounds": args.rounds,
    "windows": args.windows,
    "window_s": args.window_s,
    "threshold": args.threshold,
    "raw": rounds,
    "steps": steps,
    "verdict": verdict(steps, sets, args.threshold),
  }
  res = reporting.finish(res, t0)
  md = markdown(res)
  reporting.write_results(Path(args.out_dir), args.name, res, md)
  print(md)


if __name__ == "__main__":
  if not common.worker_main({"step": step_worker}):
    main()
