"""The stages of `experiments.full_scale`, each run in its own process (so that its peak memory is
its own): `python -m experiments.full_scale_stages STAGE WORKDIR SCALE SEED BUCKETS`.

Each stage writes `<workdir>/stage-<name>.json` (what it did: rows, outputs, stage-specific
measurements) when it finishes; the driver adds wall time, peak RSS and disk. Every stage reuses
what a killed run left: the generator's finished files, the converter's finished ranges
(`esmjax.data.aliccp` resume), the trainer's latest checkpoint (its own resume); prediction is
redone whole (it is the shortest stage that writes).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from esmjax.data.format.files import write_json_atomic
from esmjax.data.synthetic import aliccp_world

MODELS = ("esmm", "base")  # configs/esmm.py, configs/baselines/base.py
BATCH = 1024  # the shipped configs' batch (the ESMM paper's 1,000)
EVAL_BATCH = 8192
PRED_COLUMNS = ("pctr", "pcvr", "pctcvr")


def paths(workdir: str) -> dict[str, str]:
  raw = os.path.join(workdir, "raw")
  p = {"raw": raw, "data": os.path.join(workdir, "data"), "runs": os.path.join(workdir, "runs")}
  for s in aliccp_world.SPLITS:
    p[f"skeleton_{s}"] = os.path.join(raw, f"sample_skeleton_{s}.csv.gz")
    p[f"common_{s}"] = os.path.join(raw, f"common_features_{s}.csv.gz")
    p[f"truth_{s}"] = os.path.join(raw, f"truth_{s}.npy")
    p[f"data_{s}"] = os.path.join(workdir, "data", s)
  for m in MODELS:
    p[f"run_{m}"] = os.path.join(workdir, "runs", m)
    p[f"pred_{m}"] = os.path.join(workdir, f"predictions_{m}.parquet")
  return p


def dir_bytes(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  total = 0
  for root, _, files in os.walk(path):
    for f in files:
      try:
        total += os.path.getsize(os.path.join(root, f))
      except OSError:
        pass
  return total


def generate(workdir: str, scale: float, seed: int) -> dict:
  p = paths(workdir)
  world = aliccp_world.generate(p["raw"], scale, seed)
  rows = sum(world["splits"][s]["rows"] for s in aliccp_world.SPLITS)
  return {"rows": rows, "world": world, "out_bytes": dir_bytes(p["raw"])}


def converter_config(buckets: int):
  """The converter's field config, every field's hash buckets capped at `buckets` (0: as shipped,
  configs/data/aliccp_raw.py)."""
  from esmjax.data.ingest.aliccp import convert as aliccp

  cfg = aliccp.default_config()
  if buckets > 0:
    for f in cfg.fields.values():
      f.buckets = min(f.buckets, buckets)
  return cfg


def convert(workdir: str, split: str, buckets: int) -> dict:
  from esmjax.data.ingest.aliccp import convert as aliccp

  p = paths(workdir)
  stats_from = p["data_train"] if split == "test" else None
  m = aliccp.convert(
    p[f"skeleton_{split}"],
    p[f"common_{split}"],
    p[f"data_{split}"],
    workers=os.cpu_count() or 1,
    stats_from=stats_from,
    config=converter_config(buckets),
  )
  c = m["conversion"]
  return {
    "rows": m["num_rows"],
    "clicks": c["clicks"],
    "buys": c["buys"],
    "input_bytes": c["input_bytes"],
    "out_bytes": dir_bytes(p[f"data_{split}"]),
    "bytes_per_row": dir_bytes(p[f"data_{split}"]) / max(m["num_rows"], 1),
  }


def model_config(name: str, workdir: str):
  from experiments.common import load_config

  p = paths(workdir)
  config = load_config(name)
  config.data.train_dir = p["data_train"]
  config.data.eval_dir = p["data_test"]
  config.train.batch_size = BATCH
  config.train.num_epochs = 1.0
  # The trainer's own closing evaluation reads a sample only: the whole test split is scored
  # once, by the predict stage, which also writes the predictions and adds the ground truth.
  config.train.max_eval_rows = 65_536
  config.train.log_every = 20
  return config


def train(workdir: str, name: str) -> dict:
  from esmjax import api

  p = paths(workdir)
  summary = api.train(model_config(name, workdir), p[f"run_{name}"])
  ck = os.path.join(p[f"run_{name}"], "checkpoints")
  return {
    "rows": int(summary["steps"]) * BATCH,
    "steps": int(summary["steps"]),
    "trainer_examples_per_sec": summary.get("examples_per_sec"),
    "checkpoint_bytes": dir_bytes(ck),
    "checkpoint_steps": sorted(os.listdir(ck)) if os.path.isdir(ck) else [],
    "out_bytes": dir_bytes(p[f"run_{name}"]),
  }


def _save_seconds(run, state, directory: str) -> float:
  """Seconds to write one more checkpoint of `state` (into `directory`, a scratch workdir) with the
  trainer's checkpointer, to the end of its background write."""
  from esmjax.checkpoints import checkpoint as ckpt_lib

  ck = ckpt_lib.Checkpointer(directory, run.config, run)
  try:
    t0 = time.time()
    ck.save(int(state.step) + 1, state, None)
    ck.wait()
    return time.time() - t0
  finally:
    ck.close()


def predict(workdir: str, name: str) -> dict:
  """Scores the whole test split with the model's latest checkpoint: predictions to a Parquet file
  (written batch by batch), metrics against labels and the generator's ground truth."""
  import shutil

  import pyarrow as pa
  import pyarrow.parquet as pq
  from tqdm import tqdm

  from esmjax.common import inputs
  from esmjax.core import sharding as sh
  from esmjax.core.steps import BATCH_KEYS
  from esmjax.data.format import dataset as ds_lib
  from esmjax.data.pipeline import batches as pipeline
  from esmjax.evaluation import metrics
  from esmjax.evaluation import scoring as evaluation
  from esmjax.serving import predict

  p = paths(workdir)
  t0 = time.time()
  run, state = predict.load(p[f"run_{name}"], model_config(name, workdir))
  restore_s = time.time() - t0
  ds = ds_lib.open_dataset(p["data_test"])
  evaluation.check_schema(run.schema, ds)
  step = predict.jit_predict_step(run)
  n = ds.num_rows
  cols = {k: np.empty(n, np.float32) for k in PRED_COLUMNS}
  labels = np.empty((n, 2), np.uint8)
  users = np.empty(n, np.int64)
  sids = np.empty(n, np.int64)
  strays = 0
  schema = pa.schema([("sample_id", pa.int64())] + [(k, pa.float32()) for k in PRED_COLUMNS])
  tmp = p[f"pred_{name}"] + ".tmp"
  at, t1 = 0, time.time()
  with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
    bar = tqdm(total=n, desc=f"predict {name}", unit="rows", unit_scale=True, mininterval=1)

    def collect(out, batch, k, at):
      out = sh.to_host_local(out, run.mesh)
      s = slice(at, at + k)
      for c in PRED_COLUMNS:
        cols[c][s] = np.asarray(out[c])[:k]
      labels[s], users[s], sids[s] = batch["labels"][:k], batch["user"][:k], batch["sample_id"][:k]
      w.write_table(
        pa.table({"sample_id": sids[s], **{c: cols[c][s] for c in PRED_COLUMNS}}, schema=schema)
      )
      bar.update(k)
      return int(np.asarray(out[inputs.STRAYS_KEY])[:k].sum())

    # One batch in flight, as esmjax.evaluation.scoring.predict_dataset: the next batch is read
    # while the devices score this one.
    pending = None
    for batch, k in pipeline.eval_batches(ds, EVAL_BATCH):
      out = step(state, sh.put_batch({c: batch[c] for c in BATCH_KEYS}, run.mesh))
      if pending is not None:
        strays += collect(*pending)
      pending, at = (out, batch, k, at), at + k
    if pending is not None:
      strays += collect(*pending)
    bar.close()
  os.replace(tmp, p[f"pred_{name}"])
  score_s = time.time() - t1
  assert at == n, (at, n)
  # Ground truth: row i of truth_test.npy is sample_id i + 1.
  truth = np.load(p["truth_test"], mmap_mode="r")
  t = np.asarray(truth[sids - 1])
  t2 = time.time()
  m = metrics.evaluate(
    {k: v for k, v in cols.items()},
    {"click": labels[:, 0], "buy": labels[:, 1]},
    users,
    truth={"would_buy": t[:, 2], "pcvr": t[:, 1]},
  )
  metrics_s = time.time() - t2
  scratch = os.path.join(workdir, "tmp_save_" + name)
  save_s = _save_seconds(run, state, scratch)
  shutil.rmtree(scratch, ignore_errors=True)
  return {
    "rows": n,
    "metrics": m,
    "stray_ids": strays,
    "restore_seconds": restore_s,
    "score_seconds": score_s,
    "metrics_seconds": metrics_s,
    "checkpoint_save_seconds": save_s,
    "out_bytes": os.path.getsize(p[f"pred_{name}"]),
  }


STAGES = {
  "generate": lambda w, s, seed, b: generate(w, s, seed),
  "convert_train": lambda w, s, seed, b: convert(w, "train", b),
  "convert_test": lambda w, s, seed, b: convert(w, "test", b),
  "train_esmm": lambda w, s, seed, b: train(w, "esmm"),
  "train_base": lambda w, s, seed, b: train(w, "base"),
  "predict_esmm": lambda w, s, seed, b: predict(w, "esmm"),
  "predict_base": lambda w, s, seed, b: predict(w, "base"),
}


def main(argv) -> None:
  stage, workdir = argv[1], argv[2]
  scale, seed, buckets = float(argv[3]), int(argv[4]), int(argv[5])
  rec = STAGES[stage](workdir, scale, seed, buckets)
  write_json_atomic(os.path.join(workdir, f"stage-{stage}.json"), rec, indent=1)


if __name__ == "__main__":
  from esmjax.common import absl_flags

  absl_flags.ensure_parsed()
  main(sys.argv)
