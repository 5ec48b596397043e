r"""What verifying a checkpoint costs: the state digests (esmjax.common.digest) against a restore.

  python benchmarks/checkpoint_verify.py [--rows=10000000] [--repeats=5] [--dir=/tmp/ckpt-verify]

Two states of configs/esmm.py: the default synthetic world's, and the same model with the largest
single-valued field grown until the table has `--rows` rows. For each, interleaved in one process
(so machine load hits both alike), the medians of:

- `digest`: esmjax.common.digest.digests, what save records and restore verifies (on the devices);
- `sha256`: state.state_fingerprint, a SHA-256 over host copies of every array (the alternative);
- `restore`: Checkpointer.restore_latest of a saved checkpoint without verification, and
  `restore+verify` with it (what a resume pays).

Prints one JSON line per state. Load on a shared machine moves single timings: quote the medians
with `uptime`'s load average.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402


@dataclasses.dataclass
class Opts:  # prints its lines; writes no results file
  rows: int = harness.opt(10_000_000, "table rows of the grown state")
  repeats: int = harness.opt(5, "interleaved timings of each (the median is quoted)")
  dir: str = harness.opt("/tmp/esmjax-ckpt-verify", "where the checkpoints are saved")


def grown(schema, rows: int):
  """`schema` with its largest single-valued field grown so the table has `rows` rows in all."""
  from esmjax.embedding import engine as engine_lib

  now = engine_lib.FeatureLayout.from_schema(schema, bucketise_dense=False).num_rows
  i = max(range(len(schema.sparse)), key=lambda j: schema.sparse[j].vocab_size)
  f = schema.sparse[i]
  bigger = dataclasses.replace(f, vocab_size=f.vocab_size + max(0, rows - now))
  return dataclasses.replace(schema, sparse=schema.sparse[:i] + (bigger,) + schema.sparse[i + 1 :])


def measure(name: str, config, schema, repeats: int, directory: str) -> dict:
  import jax

  from esmjax.checkpoints import checkpoint as ckpt_lib
  from esmjax.common import digest as digest_lib
  from esmjax.core import state as state_lib
  from esmjax.training import trainer

  run = trainer.Run(config, schema)
  state = jax.block_until_ready(run.init_fn())
  workdir = os.path.join(directory, name)
  shutil.rmtree(workdir, ignore_errors=True)
  ck = ckpt_lib.Checkpointer(workdir, config, run)
  ck.save(1, state, None)
  ck.close()

  def restore(verify: bool):
    c = ckpt_lib.Checkpointer(workdir, config, run)
    if not verify:
      c._verify = lambda *args: None
    try:
      return jax.block_until_ready(c.restore_latest())
    finally:
      c.close()

  jobs = {
    "digest": lambda: digest_lib.digests(state),
    "sha256": lambda: state_lib.state_fingerprint(state),
    "restore": lambda: restore(False),
    "restore+verify": lambda: restore(True),
  }
  for job in jobs.values():  # compile and warm the caches
    job()
  times: dict[str, list[float]] = {k: [] for k in jobs}
  for _ in range(repeats):
    for k, job in jobs.items():
      t = time.perf_counter()
      job()
      times[k].append(time.perf_counter() - t)
  shutil.rmtree(workdir, ignore_errors=True)
  leaves = jax.tree_util.tree_leaves(state)
  return {
    "state": name,
    "table_rows": int(next(iter(state.tables.values())).shape[0]),
    "state_mb": round(sum(x.nbytes for x in leaves) / 2**20, 1),
    "devices": run.mesh.size,
    "backend": jax.default_backend(),
    "repeats": repeats,
    **{f"{k}_s": round(statistics.median(v), 4) for k, v in times.items()},
    "load_avg": [round(x, 2) for x in os.getloadavg()],
  }


def main(argv=None) -> None:
  args = harness.parse(Opts, argv, __doc__)
  import common

  from esmjax.common import absl_flags
  from esmjax.data.synthetic import cache as synthetic

  absl_flags.ensure_parsed()
  config = common.shipped_config(ROOT, "esmm")
  schema = synthetic.build_schema(config.data.synthetic)
  for name, s in (("esmm-default", schema), (f"esmm-{args.rows}-rows", grown(schema, args.rows))):
    print(json.dumps(measure(name, config, s, args.repeats, args.dir)), flush=True)


if __name__ == "__main__":
  main()
