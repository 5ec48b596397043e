"""Scoring with a trained model: the latest checkpoint of a workdir on any dataset of its schema."""

from __future__ import annotations

import csv
import json
import os

import jax
import numpy as np

from esmjax import checkpoint as ckpt_lib
from esmjax import config as config_lib
from esmjax import evaluation
from esmjax import trainer
from esmjax.loop import data as data_lib
from esmjax.loop import workdir as workdir_lib
from esmjax.data import dataset as ds_lib

PRED_COLUMNS = ("pctr", "pcvr", "pctcvr", "pctavr")


def load_schema(workdir: str) -> ds_lib.Schema:
  path = os.path.join(workdir, workdir_lib.SCHEMA_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not the workdir of a training run")
  with open(path) as f:
    return ds_lib.Schema.from_json(json.load(f))


def restore(config, workdir: str):
  """(Run, state) from the latest checkpoint in `workdir`, on this process's devices."""
  config_lib.validate(config)
  run = trainer.Run(config, load_schema(workdir))
  ck = ckpt_lib.Checkpointer(workdir, config, run)
  state = ck.restore_latest()
  ck.close()
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, ckpt_lib.CKPT_DIR)}")
  return run, state


def _check_schema(run, dataset: ds_lib.Dataset) -> None:
  a, b = run.schema.to_json(), dataset.schema.to_json()
  for key in ("sparse", "multi"):
    if [(f["name"], f.get("max_len")) for f in a[key]] != [(f["name"], f.get("max_len")) for f in b[key]]:
      raise ds_lib.DatasetError(f"{dataset.directory}: its {key} fields differ from the model's "
                                "(trained on another schema)")


def predict_to_csv(config, workdir: str, input_dir: str, output_csv: str) -> int:
  """Writes `sample_id,pctr,pcvr,pctcvr[,pctavr]`, one row per input row, in input order."""
  dataset = ds_lib.open_dataset(input_dir)
  run, state = restore(config, workdir)
  _check_schema(run, dataset)
  cols = evaluation.predict_dataset(run.predict_step, state, dataset, config.train.eval_batch_size, run.mesh)
  cols = evaluation.sh.gather_host_columns(cols)
  if jax.process_index() != 0:
    return len(cols["sample_id"])
  names = [c for c in PRED_COLUMNS if c in cols]
  os.makedirs(os.path.dirname(os.path.abspath(output_csv)), exist_ok=True)
  tmp = output_csv + ".tmp"
  with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["sample_id", *names])
    ids = cols["sample_id"]
    vals = np.stack([cols[c] for c in names], 1)
    for i in range(len(ids)):
      w.writerow([int(ids[i]), *(f"{v:.7g}" for v in vals[i])])
  os.replace(tmp, output_csv)
  return len(cols["sample_id"])


def evaluate_workdir(config, workdir: str) -> dict[str, float]:
  run, state = restore(config, workdir)
  _, eval_ds = data_lib.resolve_datasets(config)
  return run.evaluate(state, eval_ds)
