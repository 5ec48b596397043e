r"""What verifying every file read back costs (esmjax.common.digest): the data pipeline and
checkpoints.

  python benchmarks/read_verification.py [--rows=2000000] [--repeats=15] [--dir=/tmp/read-verify]

The dataset: tests/tiny.py's schema, written with the default layout (8192-row blocks, 64 blocks
per shard) and, as a worst case for the per-shard checks, with 4096-row blocks, 3 per shard.

Interleaved in one process (machine load hits both variants alike; the order alternates), the
medians of each variant and of the per-repeat ratios (on / off) of:

- `open`: open_dataset alone (the only place the dataset digests run: the per-block path of the
  pipeline is the same code in both variants), ms;

- `pipeline`: open_dataset (manifest digest, every shard's size and tail digest, confined paths)
  plus one epoch of the training pipeline, rows/s, with the file digests on and off (`off`
  replaces the manifest and shard checks with no-ops; block checksums stay on in both);
- `save`, `restore`: Checkpointer.save + wait, and restore_latest with a data iterator, with the
  checkpoint's file digests (sealed meta, config digest, data-position digest) on and off; the
  state-array digests run in both;
- `added`: the added work alone, repeated 50 times: sealing the checkpoint meta (config and
  position digests included) beyond the state digests, verifying it at restore, and the
  manifest + shard checks of one open_dataset — as fractions of the medians above. On a loaded
  machine the end-to-end ratios swing by more than the effect; these fractions do not.

Writes benchmarks/results/read_verification.json (or --out_dir) and prints it, with the CPU model
and load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402


@dataclasses.dataclass
class Opts(harness.Options):
  rows: int = harness.opt(2_000_000, "rows of the dataset")
  repeats: int = harness.opt(15, "interleaved repeats of each variant (medians quoted)")
  dir: str = harness.opt("/tmp/read-verify", "where the dataset and checkpoints are written")


def cpu(machine: dict) -> dict:
  have = machine["cpu_bf16_flags"]
  return {
    "model": machine["cpu"],
    "avx512_bf16": "avx512_bf16" in have,
    "amx_bf16": "amx_bf16" in have,
  }


@contextlib.contextmanager
def file_digests_off():
  """The manifest / shard checks of open_dataset and the checkpoint's file digests as no-ops."""
  from esmjax.checkpoints import checkpoint as ckpt_lib
  from esmjax.common import digest
  from esmjax.data.format import dataset as D

  saved = (
    D.digest.verify_json,
    D.digest.tail_digest,
    D.digest.confined_file,
    ckpt_lib.Checkpointer._sealed_meta,
    ckpt_lib.Checkpointer._verified_meta,
    ckpt_lib.Checkpointer._verify_position,
  )
  tail = {}
  D.digest.verify_json = lambda obj, *a, **k: {k2: v for k2, v in obj.items() if k2 != digest.KEY}
  D.digest.tail_digest = lambda p: tail.get(p) or tail.setdefault(p, saved[1](p))
  D.digest.confined_file = lambda d, n, w: os.path.join(d, n)
  ckpt_lib.Checkpointer._sealed_meta = lambda self, step, has, state, c, d: self._meta(
    step, has, digest.digests(state)
  )
  ckpt_lib.Checkpointer._verified_meta = lambda self, step, meta, c: {
    k: v for k, v in meta.items() if k != digest.KEY
  }
  ckpt_lib.Checkpointer._verify_position = lambda self, meta, it: None
  try:
    yield
  finally:
    (
      D.digest.verify_json,
      D.digest.tail_digest,
      D.digest.confined_file,
      ckpt_lib.Checkpointer._sealed_meta,
      ckpt_lib.Checkpointer._verified_meta,
      ckpt_lib.Checkpointer._verify_position,
    ) = saved


def main(argv=None) -> None:
  args = harness.parse(Opts, argv, __doc__)
  rec = harness.Record("read_verification", args)

  import jax
  import tiny

  from esmjax.checkpoints import checkpoint as ckpt_lib
  from esmjax.core import feed as data_lib
  from esmjax.data.format import dataset as D
  from esmjax.data.pipeline import batches as pipeline
  from esmjax.training import trainer

  shutil.rmtree(args.dir, ignore_errors=True)
  os.makedirs(args.dir)
  data = Path(args.dir)
  schema = tiny.tiny_schema()
  chunks = (tiny.random_block(schema, 100_000, seed=i) for i in range(args.rows // 100_000))
  D.write_dataset(str(data / "train"), schema, chunks, block_rows=8192, blocks_per_shard=64)
  tiny.tiny_dataset(str(data / "small_shards"), n=args.rows // 4, block_rows=4096)
  tiny.tiny_dataset(str(data / "eval"), n=1000, seed=1)
  config = tiny.run_config(data, **{"mesh.num_devices": 1, "model.embed_dim": 64})
  run = trainer.Run(config, tiny.tiny_schema())
  state = jax.block_until_ready(run.init_fn())
  cfg = pipeline.PipelineConfig(batch_size=4096, seed=0, window_blocks=4, num_epochs=1, prefetch=0)

  def epoch() -> float:
    t = time.perf_counter()
    ds = D.open_dataset(str(data / "train"))
    rows = sum(len(b["user"]) for b in pipeline.train_iter_dataset(ds, cfg))
    return rows / (time.perf_counter() - t)

  def open_ms(name: str = "train") -> float:
    t = time.perf_counter()
    for _ in range(10):
      D.open_dataset(str(data / name))
    return (time.perf_counter() - t) * 100

  def added() -> dict:
    """ms of the added work alone (50 repetitions each, medians)."""
    from esmjax.common import digest

    train_ds, _ = data_lib.resolve_datasets(config)
    it = data_lib.make_train_iter(config, train_ds)
    next(it)
    ck = ckpt_lib.Checkpointer(str(data / "added"), config, run)
    cj = json.loads(config.to_json_best_effort())
    position = it.get_state()
    meta = ck._sealed_meta(1, True, state, cj, position)

    def ms(fn) -> float:
      out = []
      for _ in range(50):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
      return statistics.median(out)

    plain = ck._meta(1, True, digest.digests(state))
    res = {  # what _sealed_meta adds to the state digests
      "save_seal_ms": ms(
        lambda: (digest.json_digest(cj), digest.json_digest(position), digest.seal(plain))
      ),
      "restore_verify_ms": ms(lambda: ck._verified_meta(1, meta, cj))
      + ms(lambda: digest.json_digest(it.get_state())),
    }
    for name in ("train", "small_shards"):
      on = ms(lambda n=name: D.open_dataset(str(data / n)))
      with file_digests_off():
        off = ms(lambda n=name: D.open_dataset(str(data / n)))
      res[f"open_checks_ms_{name}"] = on - off
    ck.close()
    data_lib.close_iter(it)
    return res

  def save_restore(step: int) -> tuple[float, float]:
    wd = str(data / "wd")
    shutil.rmtree(wd, ignore_errors=True)
    train_ds, _ = data_lib.resolve_datasets(config)
    it = data_lib.make_train_iter(config, train_ds)
    next(it)
    ck = ckpt_lib.Checkpointer(wd, config, run)
    t = time.perf_counter()
    ck.save(step, state, it)
    ck.wait()
    t_save = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(ck.restore_latest(it))
    t_restore = time.perf_counter() - t
    ck.close()
    data_lib.close_iter(it)
    return t_save, t_restore

  kinds = ("open", "pipeline", "save", "restore")
  times = {f"{k}_{v}": [] for k in kinds for v in ("on", "off")}

  def variants(r: int):
    for variant in ("on", "off") if r % 2 == 0 else ("off", "on"):
      with file_digests_off() if variant == "off" else contextlib.nullcontext():
        yield variant

  epoch(), save_restore(1)  # warm-up: compilation, page cache
  # Two loops: an epoch's garbage slows the save that follows it, whichever variant it is.
  for r in range(args.repeats):
    for variant in variants(r):
      times[f"open_{variant}"].append(open_ms())
      times[f"pipeline_{variant}"].append(epoch())
  for r in range(2 * args.repeats):
    for variant in variants(r):
      s, rs = save_restore(10 + r)
      times[f"save_{variant}"].append(s)
      times[f"restore_{variant}"].append(rs)
  med = {k: statistics.median(v) for k, v in times.items()}
  extra = added()
  epoch_s = args.rows / med["pipeline_off"]
  paired = {
    k: statistics.median(a / b for a, b in zip(times[f"{k}_on"], times[f"{k}_off"], strict=True))
    for k in kinds
  }
  out = {
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "cpu": cpu(rec["machine"]),
    "load_avg": os.getloadavg(),
    "rows": args.rows,
    "repeats": args.repeats,
    "median": med,
    "shards": len(D.open_dataset(str(data / "train")).shard_paths),
    "shards_small": len(D.open_dataset(str(data / "small_shards")).shard_paths),
    "pipeline_rows_per_s_ratio_on_over_off": med["pipeline_on"] / med["pipeline_off"],
    "save_time_ratio_on_over_off": med["save_on"] / med["save_off"],
    "restore_time_ratio_on_over_off": med["restore_on"] / med["restore_off"],
    "open_time_ratio_on_over_off": med["open_on"] / med["open_off"],
    "median_of_paired_ratios_on_over_off": paired,
    "added_ms": extra,
    "added_fraction": {
      "save": extra["save_seal_ms"] / 1e3 / med["save_off"],
      "restore": extra["restore_verify_ms"] / 1e3 / med["restore_off"],
      "pipeline_epoch_default_layout": extra["open_checks_ms_train"] / 1e3 / epoch_s,
      "pipeline_epoch_small_shards": extra["open_checks_ms_small_shards"] / 1e3 / epoch_s * 4,
    },
    "all": times,
  }
  rec.update(out)
  rec.write(None)  # the JSON alone
  print(json.dumps({k: v for k, v in out.items() if k != "all"}, indent=1))
  shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
  main()
