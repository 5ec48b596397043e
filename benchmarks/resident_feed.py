r"""The device-resident feed alone: rows/s of the per-step gather (permutation + row gather) that
`data.input_mode='device'` runs inside the dispatch loop, without the train step.

    python benchmarks/resident_feed.py                 # batch 1 024, 4 096, 16 384, 65 536
    python benchmarks/resident_feed.py --batches 4096

The rows: the default synthetic world's 1 M training rows (the shipped configs' data) resident on
the devices; per call, `steps` batches are gathered in one jitted loop as the dispatch program
gathers them (the rows of `train.steps_per_dispatch` steps at once, then the next dispatch's) and
reduced to one number that reads every gathered value (the sum is part of the time). Rates are
medians of --repeats timed calls. Target on an H200 (issue 24): >= 100 M rows/s. On CPU the
gather is memory-latency bound (one random ~400 B row per example), which is why
`data.input_mode='auto'` goes by what was measured.

Writes benchmarks/results/resident_feed.{json,md} (or --out_dir).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402


@dataclasses.dataclass
class Opts(harness.Options):
  batches: str = harness.opt("1024,4096,16384,65536", "comma-separated batch sizes")
  steps: int = harness.opt(64, "batches gathered per timed call")
  repeats: int = harness.opt(5, "timed calls per batch size (the median is quoted)")


def feed_rate(config, train_ds, steps: int, repeats: int) -> dict[str, float]:
  import jax
  import jax.numpy as jnp

  from esmjax.core import sharding as sh
  from esmjax.training import resident

  mesh = sh.make_mesh(config.mesh.num_devices, config.mesh.axis)
  data = resident.ResidentData(train_ds, config, mesh)
  k = int(config.train.steps_per_dispatch)
  gather = data.gather_fn(mesh, unpacked=True, steps=k)
  steps = max(k, steps - steps % k)

  def loop(columns, pos):
    def body(_, carry):
      pos, acc = carry
      rows = gather(columns, *pos)
      # Every value is used: XLA would otherwise gather only what the reduction reads.
      acc = acc + sum(v.astype(jnp.float32).sum() for v in rows.values())
      return resident.position_after(pos, k * data.b, data.m), acc

    return jax.lax.fori_loop(0, steps // k, body, (pos, jnp.float32(0)))

  run = jax.jit(loop)
  pos = jax.device_put(data.start_position(0), sh.replicated(mesh))
  jax.block_until_ready(run(data.columns, pos))  # compile + warm-up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    pos, _ = jax.block_until_ready(run(data.columns, pos))
    times.append(time.perf_counter() - t)
  rows = steps * config.train.batch_size
  return {"rows_per_s": rows / statistics.median(times), "row_bytes": resident.row_bytes(train_ds)}


def main(argv=None) -> int:
  args = harness.parse(Opts, argv, __doc__)
  from common import datasets, shipped_config

  from esmjax.common import absl_flags

  absl_flags.ensure_parsed("resident_feed")
  record = harness.Record("resident_feed", args)
  import jax

  rows, results = [], {}
  for batch in (int(b) for b in args.batches.split(",")):
    config = shipped_config(ROOT, "esmm", batch_size=batch)
    train_ds, _ = datasets(config)
    out = feed_rate(config, train_ds, args.steps, args.repeats)
    results[batch] = out
    rows.append([batch, out["rows_per_s"], out["rows_per_s"] * out["row_bytes"] / 2**30])
    print(f"batch {batch}: {out['rows_per_s']:,.0f} rows/s", flush=True)
  record.finish().update(
    results=results, device=str(jax.devices()[0]), device_count=jax.device_count()
  )
  header = (
    "# The device-resident feed alone (permutation + gather, no train step)\n\n"
    f"{harness.code_line(record)}Measured {record['when']} on {record['machine']['cpu']} "
    f"({record['machine']['cores']} usable cores), devices: {jax.device_count()} x "
    f"{record['device']}; load average {record['load_before']} before and "
    f"{record['load_after']} after; medians of {args.repeats} calls of {args.steps} batches. "
    f"Command: `{record['command']}`.\n\n"
  )
  md = harness.markdown_table(["batch", "rows/s", "GiB/s gathered"], rows) + "\n"
  for path in record.write(header + md):
    print("wrote", path)
  print(header + md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
