r"""The two input modes (`data.input_mode`) end to end against the step alone, interleaved.

    python benchmarks/input_modes.py            # 3 rounds, ESMM and ESM2, batch 1 024 and 4 096
    python benchmarks/input_modes.py --quick    # 1 round, a third of an epoch per run

For the shipped configs (configs/esmm.py, configs/esm2.py: the default synthetic world, 1 M train
rows) at batch 1 024 and 4 096, three things are measured in one process, the order rotated each
round so the machine's load falls on all alike:

  step     the dispatch program alone (train.steps_per_dispatch steps per call) on one stacked
           set of pre-made batches already on the device: what the device can do.
  stream   the trainer (`esmjax.training.trainer.train_and_evaluate`) with
           data.input_mode='stream': the
           grain reader, stacking, host→device copies, logging; rate = its summary's
           examples_per_sec (compilation, evaluations and the final save left out).
  device   the same with data.input_mode='device': the rows resident, gathered in the loop.

Each run trains one epoch (977 / 245 steps; at least 240 steps at larger batches; --quick: a
third), evaluates on 16 384 rows (outside
the rate) and writes checkpoints as the shipped config does. Rates are medians over rounds; ratios
are of those medians. The checks: the mode 'auto' picks on this machine reaches ≥ 95 % of the
step alone, and where 'auto' picks 'device', 'device' is not slower than 'stream'.

Writes benchmarks/results/input_modes.{json,md} (or --out_dir).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
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
  quick: bool = harness.opt(False, "1 round, a third of an epoch per run")
  rounds: int = harness.opt(0, "default 3 (--quick: 1)")
  models: str = harness.opt("esmm,esm2", "comma-separated shipped configs")
  batches: str = harness.opt("1024,4096", "comma-separated batch sizes")


EPOCH_ROWS = 1_000_000  # the default world's training rows


def step_alone(config, steps: int) -> float:
  """examples/s of the dispatch program on pre-made device batches (steps rounded to dispatches)."""
  import jax

  from esmjax.core import feed as data_lib
  from esmjax.core import guard as guard_lib
  from esmjax.core import sharding as sh
  from esmjax.core.run import Run
  from esmjax.training import dispatch as dispatch_lib

  train_ds, _ = data_lib.resolve_datasets(config)
  run = Run(config, train_ds.schema)
  k = int(config.train.steps_per_dispatch)
  dispatcher = dispatch_lib.Dispatcher(run, k)
  dispatcher.compile()
  it = data_lib.make_train_iter(config, train_ds)
  batches = [next(it) for _ in range(k)]
  data_lib.close_iter(it)
  if k == 1:
    device = sh.put_batch({key: batches[0][key] for key in dispatch_lib.steps.BATCH_KEYS}, run.mesh)
    call = lambda s, g: dispatcher._compiled(s, device, g)  # noqa: E731
  else:
    device = sh.put_batch(dispatch_lib.stack(batches, k), run.mesh, stacked=True)
    n = jax.device_put(jax.numpy.int32(k), run.replicated)
    call = lambda s, g: dispatcher._compiled(s, device, g, n)  # noqa: E731
  state = run.init_fn()
  guard = jax.device_put(guard_lib.initial(len(run.loss_names)), run.replicated)
  for _ in range(2):  # warm-up
    state, _, guard = call(state, guard)
  jax.block_until_ready(state)
  calls = max(1, steps // k)
  t = time.perf_counter()
  for _ in range(calls):
    state, _, guard = call(state, guard)
  jax.block_until_ready(state)
  return calls * k * config.train.batch_size / (time.perf_counter() - t)


def end_to_end(config, mode: str, tmp: Path) -> float:
  from esmjax.training import trainer

  config.data.input_mode = mode
  workdir = tempfile.mkdtemp(dir=tmp)
  try:
    return float(trainer.train_and_evaluate(config, workdir)["examples_per_sec"])
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def chosen_mode(config) -> str:
  """What data.input_mode='auto' resolves to for `config` on this machine."""
  from esmjax.core import feed as data_lib
  from esmjax.core.run import Run
  from esmjax.training import input_mode

  train_ds, _ = data_lib.resolve_datasets(config)
  return input_mode.resolve(config, Run(config, train_ds.schema), train_ds)


def main(argv=None) -> int:
  args = harness.parse(Opts, argv, __doc__)
  from absl import logging
  from common import shipped_config

  from esmjax.common import absl_flags, compile_cache

  absl_flags.ensure_parsed("input_modes")
  logging.set_verbosity(logging.WARNING)
  record = harness.Record("input_modes", args)
  rounds = args.rounds or (1 if args.quick else 3)
  tmp = Path(tempfile.mkdtemp(prefix="esmjax-input-modes-"))
  points = [(m, int(b)) for m in args.models.split(",") for b in args.batches.split(",")]
  rates: dict[tuple[str, int, str], list[float]] = {}
  auto: dict[tuple[str, int], str] = {}

  def config_for(model: str, batch: int):
    # At least 240 steps: an epoch at batch 16,384 is 61 steps, ~50 ms on an H200, too short to
    # time a run by (its first dispatch and the loop's end weigh in).
    steps = max(8 if args.quick else 240, EPOCH_ROWS // batch // (3 if args.quick else 1))
    c = shipped_config(ROOT, model, batch_size=batch, num_steps=steps)
    c.train.max_eval_rows = 16_384
    c.train.compile_cache_dir = str(tmp / "compile-cache")  # recompiles cost this run nothing
    return c, steps

  compile_cache.enable(config_for(*points[0])[0])
  try:
    for model, batch in points:
      auto[(model, batch)] = chosen_mode(config_for(model, batch)[0])
    kinds = ["step", "stream", "device"]
    for r in range(rounds):
      for model, batch in points:
        order = kinds[r % 3 :] + kinds[: r % 3]
        for kind in order:
          config, steps = config_for(model, batch)
          if kind == "step":
            rate = step_alone(config, steps)
          else:
            rate = end_to_end(config, kind, tmp)
          rates.setdefault((model, batch, kind), []).append(rate)
          print(
            f"round {r + 1}/{rounds} {model} batch {batch} {kind}: {rate:,.0f} ex/s", flush=True
          )
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

  med = {k: statistics.median(v) for k, v in rates.items()}
  rows, checks = [], []
  for model, batch in points:
    step, stream, device = (med[(model, batch, k)] for k in ("step", "stream", "device"))
    pick = auto[(model, batch)]
    rows.append(
      [model, batch, step, stream, device, stream / step, device / step, device / stream, pick]
    )
    chosen = device if pick == "device" else stream
    checks.append(
      harness.check(
        f"{model} batch {batch}: the default mode ('auto' → {pick}) end to end ≥ 95 % of the step",
        chosen >= 0.95 * step,
        f"{chosen / step:.1%}",
      )
    )
    if pick == "device":
      checks.append(
        harness.check(
          f"{model} batch {batch}: device mode not slower than the stream where 'auto' picks it",
          device >= stream,
          f"device / stream {device / stream:.2f}",
        )
      )
  record.finish().update(
    rounds=rounds,
    quick=args.quick,
    rates={f"{m}/{b}/{k}": v for (m, b, k), v in rates.items()},
    auto={f"{m}/{b}": v for (m, b), v in auto.items()},
    checks=checks,
  )
  have = record["machine"]["cpu_bf16_flags"]
  cpu_flags = ", ".join(f"{f} {'yes' if f in have else 'no'}" for f in ("avx512_bf16", "amx_bf16"))
  header = (
    "# Input modes: stream vs resident, end to end against the step alone\n\n"
    f"{harness.code_line(record)}Measured {record['when']} on {record['machine']['cpu']} "
    f"({record['machine']['cores']} usable cores; {cpu_flags}), load average "
    f"{record['load_before']} before and {record['load_after']} after; {rounds} round(s), "
    f"medians; {record['elapsed_s'] / 60:.1f} min. Command: `{record['command']}`.\n\n"
  )
  header_row = "model|batch|step alone ex/s|stream e2e ex/s|device e2e ex/s|stream / step|"
  header_row += "device / step|device / stream|'auto' picks"
  table = harness.markdown_table(header_row.split("|"), rows)
  md = table + "\n\n" + harness.checks_markdown(checks, ("met", "NOT met")) + "\n"
  for path in record.write(header + md):
    print("wrote", path)
  print(header + md)
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(main())
