r"""Start-up with and without the persistent compilation cache (`train.compile_cache_dir`).

    python benchmarks/startup.py              # 3 rounds
    python benchmarks/startup.py --rounds 1

The shipped ESMM config (configs/esmm.py) as users run it, `python -m esmjax.main`, trained for
one step and evaluated on 16 384 rows, checkpoints off, in fresh processes. Each round runs, in
turn: the cache off; a first run on an empty cache directory; a second run on that directory.
Reported per variant (medians over rounds): the process's wall time, the compile time the run
logs (the dispatch program and the state check, `compile_seconds` of summary.json) and the time
to the first step (the wall less the final evaluation: what then remains after the step, the
summary and the exit, takes under a second). The synthetic world is generated before round 1.

Writes benchmarks/results/startup.{json,md} (or --out_dir).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402


@dataclasses.dataclass
class Opts(harness.Options):
  rounds: int = 3


def one_run(cache: str, tmp: Path, env) -> dict[str, float]:
  workdir = tempfile.mkdtemp(dir=tmp)
  cmd = [
    sys.executable,
    "-m",
    "esmjax.main",
    "--config=configs/esmm.py",
    f"--workdir={workdir}",
    "--config.train.num_steps=1",
    "--config.train.max_eval_rows=16384",
    "--config.checkpoint.enabled=False",
    f"--config.train.compile_cache_dir={cache}",
  ]
  t = time.perf_counter()
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  wall = time.perf_counter() - t
  if p.returncode:
    raise RuntimeError(f"exit {p.returncode}: {p.stderr[-1500:]}")
  s = json.loads((Path(workdir) / "summary.json").read_text())
  shutil.rmtree(workdir, ignore_errors=True)
  return {
    "wall_s": wall,
    "compile_s": float(s["compile_seconds"]),
    # One step: what follows it is the final evaluation, the summary and the exit (< 1 s).
    "to_first_step_s": wall - float(s["eval_seconds"]),
    "eval_s": float(s["eval_seconds"]),
  }


def main(argv=None) -> int:
  args = harness.parse(Opts, argv, __doc__)
  record = harness.Record("startup", args)
  env = harness.worker_env(extra={"ESMJAX_COMPILE_CACHE": ""})
  tmp = Path(tempfile.mkdtemp(prefix="esmjax-startup-"))
  runs: dict[str, list[dict[str, float]]] = {"off": [], "first": [], "second": []}
  try:
    one_run("", tmp, env)  # the synthetic world, generated once
    for r in range(args.rounds):
      cache = str(tmp / f"cache-{r}")
      for kind in ("off", "first", "second"):
        out = one_run("" if kind == "off" else cache, tmp, env)
        runs[kind].append(out)
        print(f"round {r + 1}/{args.rounds} {kind}: {out}", flush=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
  record.finish().update(rounds=args.rounds, runs=runs, medians=med)
  rows = [
    [k, med[k]["wall_s"], med[k]["to_first_step_s"], med[k]["compile_s"], med[k]["eval_s"]]
    for k in ("off", "first", "second")
  ]
  saved = med["first"]["to_first_step_s"] - med["second"]["to_first_step_s"]
  header = (
    "# Start-up with the persistent compilation cache (configs/esmm.py, one step)\n\n"
    f"{harness.code_line(record)}Measured {record['when']} on {record['machine']['cpu']} "
    f"({record['machine']['cores']} usable cores), load average {record['load_before']} before "
    f"and {record['load_after']} after; {args.rounds} round(s), medians. Command: "
    f"`{record['command']}`.\n\n"
  )
  md = (
    harness.markdown_table(
      ["cache", "process wall s", "to the first step s", "compile s (logged)", "evaluation s"],
      rows,
    )
    + f"\n\nThe second run reaches its first step {saved:.1f} s sooner than the first "
    f"({med['second']['to_first_step_s'] / med['first']['to_first_step_s']:.0%} of its time).\n"
  )
  for path in record.write(header + md):
    print("wrote", path)
  print(header + md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
