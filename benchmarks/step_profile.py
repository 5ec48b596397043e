r"""Where the train step's time goes: the XLA:CPU ops of one step, traced and summed by kind.

    python benchmarks/step_profile.py [--quick] [--batches=1024,4096] [--dtypes=float32,bfloat16]

Each (batch, towers dtype) runs in its own worker process (huge-page malloc, as the CLI starts):
the ESMM step at the paper's sizes (23 fields × 18, towers 200-80-1, 1e5 table rows, Zipf ids,
row-wise Adagrad, tables f32) is compiled, warmed up, timed untraced, then `--steps` steps are
traced with `jax.profiler`. The trace's op events (`<name>.trace.json.gz`, which the profiler
writes beside its xplane) are summed per step and grouped by the op's kind:

  dots         the towers' matmuls: every op whose computation in the compiled HLO holds a dot
               (XLA:CPU's ynn_/onednn_/xnn_ fusions with what XLA fused into them, plain dots)
  transposes   layout copies (`transpose_copy_*`; the bf16 towers' feature-major operands)
  gathers      table and row reads (`*gather*`)
  scatters     row writes and the duplicate merge (`*scatter*`)
  fills        zero / constant fills (`*broadcast*`, `*iota*`)
  other        every other fusion: elementwise math, losses, the optimizer's row update

Op times of the two cores' threads add up, so a kind's share is of the summed op time; the
untraced step time is beside them. An op XLA runs asynchronously (a plain `dot` on Eigen's thread
pool) may be timed only to its launch, its work showing in the ops it overlaps: in the f32 step
the first layer's weight gradient reads 0.5 ms, the input-gradient dot beside it 13.6. Kind
totals stay right where both are dots. This says which part a faster kernel would have to shrink.
Writes step_profile.{json,md} (`--name` for another CPU's record).
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import harness
import reporting

KINDS = ("dots", "transposes", "gathers", "scatters", "fills", "other")


def dot_ops(hlo_text: str) -> set[str]:
  """The names of the instructions of a compiled HLO module that compute a dot: plain dots and
  fusions whose called computation holds one (a library fusion may hold a reduction instead)."""
  bodies = dict(re.findall(r"^%([\w.\-]+) \(.*?\{\n(.*?)\n\}", hlo_text, re.S | re.M))
  out = set()
  for name, opcode, rest in re.findall(
    r"^\s+(?:ROOT )?%([\w.\-]+) = \S+ (\w+)\((.*)$", hlo_text, re.M
  ):
    called = re.search(r"calls=%([\w.\-]+)", rest)
    if opcode == "dot" or (called and " dot(" in bodies.get(called.group(1), "")):
      out.add(name)
  return out


def kind_of(op: str, dots: set[str] = frozenset()) -> str:
  """The kind (KINDS) of one XLA:CPU op event name (`dots`: the module's `dot_ops`)."""
  if op in dots or op.startswith(("dot.", "wrapped_dot")) or op == "dot":
    return "dots"
  for kind, marks in (
    ("transposes", ("transpose",)),
    ("gathers", ("gather",)),
    ("scatters", ("scatter",)),
    ("fills", ("broadcast", "iota")),
  ):
    if any(m in op for m in marks):
      return kind
  return "other"


def op_times(trace: dict, steps: int) -> dict[str, float]:
  """ms per step of every op in a Chrome-format trace: the complete events XLA tags with the
  `hlo_op` they ran (the runtime's own spans and the Python calls around a step carry no tag)."""
  tot: collections.Counter = collections.Counter()
  for e in trace.get("traceEvents", []):
    op = (e.get("args") or {}).get("hlo_op")
    if e.get("ph") == "X" and op:
      tot[op] += e.get("dur", 0.0)
  return {k: v / steps / 1e3 for k, v in tot.items()}


def by_kind(ops: dict[str, float], dots: set[str] = frozenset()) -> dict[str, float]:
  out = dict.fromkeys(KINDS, 0.0)
  for op, ms in ops.items():
    out[kind_of(op, dots)] += ms
  return out


def profile_worker(spec: dict) -> dict:
  """One (batch, dtype) step: untraced ms per step, then the traced steps' ops."""
  import jax

  from esmjax.config import defaults as config_lib
  from esmjax.core import sharding as sh
  from esmjax.core import steps
  from esmjax.training import trainer

  schema = common.paper_schema(spec["rows"])
  mesh = sh.make_mesh(1)
  host = common.zipf_batches(schema, spec["batch"], 4)
  batches = [sh.put_batch({k: b[k] for k in steps.BATCH_KEYS}, mesh) for b in host]
  cfg = common.bench_config("esmm", spec["batch"])
  cfg.model.dtype, cfg.embedding.dtype = spec["dtype"], "float32"
  run = trainer.Run(config_lib.validate(cfg), schema, mesh=mesh)
  state, i = run.init_fn(), 0

  def go(n):
    nonlocal state, i
    for _ in range(n):
      state, m = run.train_step(state, batches[i % len(batches)])
      i += 1
    jax.block_until_ready(m)

  go(5)  # compile and warm up
  hlo = run.train_step.lower(state, batches[0]).compile().as_text()
  ms = []
  for _ in range(spec["windows"]):
    t = time.perf_counter()
    go(spec["steps"])
    ms.append((time.perf_counter() - t) / spec["steps"] * 1e3)
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    go(spec["steps"])
    jax.profiler.stop_trace()
    found = sorted(Path(d).rglob("*.trace.json.gz"))
    if not found:
      return {"error": f"jax.profiler wrote no *.trace.json.gz under {d} (this jaxlib's profiler)"}
    with gzip.open(found[-1]) as f:
      trace = json.load(f)
  return {"step_ms": ms, "ops": op_times(trace, spec["steps"]), "dot_ops": sorted(dot_ops(hlo))}


def markdown(res: dict) -> str:
  m = res["machine"]
  rows = []
  for r in res["runs"]:
    total = sum(r["kinds"].values())
    rows.append(
      [r["batch"], r["dtype"], f"{r['step_ms']:.1f}", f"{r['batch'] / r['step_ms']:.1f} k"]
      + [f"{r['kinds'][k]:.2f} ({r['kinds'][k] / total:.0%})" for k in KINDS]
    )
  top = []
  for r in res["runs"]:
    ops = sorted(r["ops"].items(), key=lambda kv: -kv[1])[:6]
    top.append(
      f"- batch {r['batch']}, {r['dtype']}: "
      + ", ".join(f"`{op}` {ms:.2f} ({kind_of(op, set(r['dot_ops']))})" for op, ms in ops)
    )
  return (
    f"# Where the ESMM step's time goes ({res['when']})\n\n"
    f"Machine: {m['cpu']} (bf16 flags: {', '.join(m['cpu_bf16_flags']) or 'none'}), "
    f"{m['cores']} cores; load {res['load_before']} before, {res.get('load_after')} after. "
    "Paper sizes, 1e5 table rows, row-wise Adagrad, tables f32, one worker per row (huge-page "
    f"malloc). Step ms: median of {res['windows']} untraced windows of {res['steps']} steps; the "
    f"kinds: ms per step summed over the ops of {res['steps']} traced steps (both cores' threads "
    "add up), share of the summed op time.\n\n"
    + reporting.markdown_table(["batch", "towers", "step ms", "ex/s", *KINDS], rows)
    + "\n\nThe six costliest ops (ms per step):\n"
    + "\n".join(top)
    + f"\n\nRegenerate: `{res.get('command', 'python benchmarks/step_profile.py')}`.\n"
  )


@dataclasses.dataclass
class Opts(harness.Options):
  quick: bool = harness.opt(False, "batch 1,024, bf16, 5 steps")
  batches: str = harness.opt("1024,4096", "comma-separated batch sizes")
  dtypes: str = harness.opt("float32,bfloat16", "comma-separated towers dtypes")
  steps: int = harness.opt(20, "steps per timed window and traced")
  windows: int = harness.opt(5, "untraced timed windows")
  name: str = harness.opt("step_profile", "results file name (one per CPU: step_profile_<cpu>)")


def main(argv=None):
  args = harness.parse(Opts, argv, __doc__)
  rec = harness.Record(args.name, args)
  batches = [int(b) for b in args.batches.split(",") if b]
  dtypes = harness.subset("dtypes", args.dtypes, ["float32", "bfloat16"])
  if args.quick:
    batches, dtypes, args.steps, args.windows = [1024], ["bfloat16"], 5, 2
  me = Path(__file__).resolve()
  runs = []
  for batch in batches:
    for dtype in dtypes:
      spec = dict(
        kind="profile", batch=batch, dtype=dtype, rows=100_000, steps=args.steps,
        windows=args.windows,
      )  # fmt: skip
      r = common.run_worker(me, spec, timeout=1200)
      if "error" in r:
        print(f"batch {batch} {dtype}: {r['error'][-800:]}", file=sys.stderr, flush=True)
        continue
      run = {
        "batch": batch,
        "dtype": dtype,
        "step_ms": statistics.median(r["step_ms"]),
        "step_ms_windows": r["step_ms"],
        "kinds": by_kind(r["ops"], set(r["dot_ops"])),
        "ops": r["ops"],
        "dot_ops": r["dot_ops"],
      }
      runs.append(run)
      print(
        f"batch {batch} {dtype}: {run['step_ms']:.1f} ms/step; "
        + ", ".join(f"{k} {v:.2f}" for k, v in run["kinds"].items()),
        flush=True,
      )
  if not runs:
    sys.exit("step_profile: no run finished (see the errors above)")
  rec.update(steps=args.steps, windows=args.windows, runs=runs)
  md = markdown(rec.finish())
  rec.write(md)
  print(md)


if __name__ == "__main__":
  if not common.worker_main({"profile": profile_worker}):
    main()
