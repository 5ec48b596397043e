"""Scoring with a trained model: the latest checkpoint of a workdir on any dataset of its schema.

The one place that turns a workdir into (Run, state) (`load`, `restore`) and scores a dataset of
the trained schema (`evaluation.check_schema`) with stray ids mapped to OOV and counted
(`predict_step`, `score_dataset`; see `esmjax.common.inputs`). The Python API
(`esmjax.api`), the serving export (`esmjax.serving.export`) and the CLI's predict / evaluate modes
use it.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from esmjax.checkpoints import checkpoint as ckpt_lib
from esmjax.common import absl_flags, inputs
from esmjax.config import compat
from esmjax.config import defaults as config_lib
from esmjax.core import feed as data_lib
from esmjax.core import outputs, steps
from esmjax.core import run as run_lib
from esmjax.core import sharding as sh
from esmjax.core import workdir as workdir_lib
from esmjax.core.workdir import SUMMARY_FILE
from esmjax.data.format import dataset as ds_lib
from esmjax.evaluation import scoring as evaluation
from esmjax.serving import prediction_files

PRED_COLUMNS = ("pctr", "pcvr", "pctcvr", "pctavr")
META_SUFFIX = ".json"  # predictions.csv.json: the model, workdir and checkpoint step behind them


def load_schema(workdir: str) -> ds_lib.Schema:
  path = os.path.join(workdir, workdir_lib.SCHEMA_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not the workdir of a training run")
  return ds_lib.Schema.from_json(workdir_lib.read_schema(workdir))


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with: from `summary.json`, else from the latest checkpoint.

  Rebuilt on top of `default_config()` so tuples stay tuples; data directories that no longer
  exist (a model copied to another machine) are cleared, since loading a model does not read them.
  """
  summary = workdir_lib.read_summary(workdir)  # a corrupt summary.json: one line naming it
  saved = summary.get("config") if summary is not None else None
  if saved is None:
    saved = ckpt_lib.read_config(workdir)
  if saved is None:
    raise FileNotFoundError(
      f"{workdir}: no {SUMMARY_FILE} and no checkpoint to read the config "
      "from; pass config= explicitly"
    )
  config = config_lib.default_config()
  try:
    config.update(saved)
  except (TypeError, ValueError):  # a key whose type differs from the default's: take it as saved
    config = ml_collections.ConfigDict(saved)
  # A key the saved config lacks means what it meant when the run was made, not today's default.
  saved_cfg = ml_collections.ConfigDict(saved)
  for key, value in compat.ABSENT_MEANS.items():
    try:
      config_lib.get_path(saved_cfg, key)
    except config_lib.ConfigError:
      config_lib.set_path(config, key, value)
  if not (
    os.path.isdir(config.data.train_dir or "/nonexistent")
    and os.path.isdir(config.data.eval_dir or "/nonexistent")
  ):
    config.data.train_dir = config.data.eval_dir = ""
  return config


def restore(config, workdir: str, step: int | None = None):
  """(Run, state) from checkpoint `step` (default: the latest) in `workdir`, on this process's
  devices. Never another checkpoint: one that cannot be read stops with `CheckpointError` (only a
  training resume falls back to an older one, and its summary says so)."""
  config_lib.validate(config)
  run = run_lib.Run(config, load_schema(workdir))
  ck = ckpt_lib.Checkpointer(workdir, config, run)
  try:
    state = ck.restore_step(step)
  finally:
    ck.close()
  return run, state


def load(workdir: str, config: ml_collections.ConfigDict | None = None, step: int | None = None):
  """(Run, state) of checkpoint `step` (default: the latest) of `workdir`, with its saved config
  unless given.

  A saved config that asks for more devices than are here uses all devices here instead: restore
  re-shards the state.
  """
  absl_flags.ensure_parsed()
  if config is None:
    config = saved_config(workdir)
    if config.mesh.num_devices > jax.device_count():
      config.mesh.num_devices = -1
  return restore(config, workdir, step)


def predict_step(c, state, batch) -> dict:
  """`steps.predict_step` with stray ids scored as OOV, plus their per-row counts under
  `inputs.STRAYS_KEY` (int32 [b, fields], fields in `inputs.id_fields` order)."""
  batch, strays = inputs.map_strays_in_graph(c.schema, batch)
  return {**steps.predict_step(c, state, batch), inputs.STRAYS_KEY: strays}


def jit_predict_step(run):
  """`predict_step` jitted with the run's shardings: (state, batch) -> predictions + counts."""
  bsh = sh.batch_sharding(run.mesh)
  return jax.jit(
    functools.partial(predict_step, run.components),
    in_shardings=(run.state_sharding, bsh),
    out_shardings=bsh,
  )


def pop_strays(schema: ds_lib.Schema, cols: dict[str, np.ndarray]) -> dict[str, int]:
  """Removes the per-row counts from `cols`; returns {field: stray ids} (fields with any)."""
  totals = np.asarray(cols.pop(inputs.STRAYS_KEY), np.int64).sum(0)
  return {name: int(n) for name, n in zip(inputs.id_fields(schema), totals, strict=True) if n}


def log_strays(where: str, counts: dict[str, int]) -> None:
  if counts:
    logging.warning(
      "%s: %d id(s) outside their field's vocabulary were scored as OOV (id 1): %s",
      where,
      sum(counts.values()),
      ", ".join(f"{k} {v}" for k, v in counts.items()),
    )


def score_dataset(
  run, state, dataset: ds_lib.Dataset, batch_size: int, step_fn=None, max_rows: int = -1
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """(columns of every row in file order, {field: stray ids}) after `evaluation.check_schema`.

  The columns are the predictions plus the dataset's host columns (`sample_id`, `labels`, ...),
  gathered from every process. `step_fn` defaults to `jit_predict_step(run)`.
  """
  evaluation.check_schema(run.schema, dataset)
  step_fn = step_fn or jit_predict_step(run)
  bs = -(-batch_size // run.mesh.size) * run.mesh.size
  cols = evaluation.predict_dataset(step_fn, state, dataset, bs, run.mesh, max_rows)
  # Stray counts come as per-batch sums (not rows): totalled here, then over the processes.
  local = np.asarray(cols.pop(inputs.STRAYS_KEY), np.int64).sum(0)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    local = np.asarray(multihost_utils.process_allgather(local)).sum(0)
  strays = pop_strays(run.schema, {inputs.STRAYS_KEY: local[None]})
  cols = sh.gather_host_columns(cols)  # process by process: blocks 0, P, 2P, ..., then 1, P+1, ...
  order = np.argsort(cols.pop("row"), kind="stable")
  return {k: v[order] for k, v in cols.items()}, strays


def predict_to_csv(
  config, workdir: str, input_dir: str, output_csv: str, step: int | None = None
) -> dict:
  """Writes `sample_id,pctr,pcvr,pctcvr[,pctavr]`, one row per input row, in input order, and
  `<output_csv>.json`, what produced them (model, workdir, checkpoint step, input, rows); returns
  that description. Checkpoint `step` (default: the latest) or a one-line error, never another.

  CSV (`esmjax.serving.prediction_files.write_csv`: predictions as `%.7g`), or Parquet (int64
  `sample_id`, float32 predictions, zstd) when `output_csv` ends in `.parquet`."""
  outputs.check_target(output_csv, "--predict_output")  # before any work
  dataset = ds_lib.open_dataset(input_dir)
  evaluation.check_schema(load_schema(workdir), dataset)  # before a checkpoint is read
  run, state = restore(config, workdir, step)
  cols, strays = score_dataset(run, state, dataset, config.train.eval_batch_size)
  log_strays(f"predict {input_dir}", strays)
  meta = {
    "model": run.config.model.name,
    "workdir": os.path.abspath(workdir),
    "checkpoint_step": int(jax.device_get(state.step)),
    "input": os.path.abspath(input_dir),
    "rows": len(cols["sample_id"]),
    "oov_counts": strays,
  }
  if jax.process_index() != 0:
    return meta
  names = [c for c in PRED_COLUMNS if c in cols]
  ids, vals = cols["sample_id"], [cols[c] for c in names]
  with outputs.atomic_open(output_csv, "predictions", "wb") as f:
    if output_csv.endswith(".parquet"):
      prediction_files.write_parquet(f, names, ids, vals)
    else:
      prediction_files.write_csv(f, names, ids, vals)
  outputs.atomic_write(
    output_csv + META_SUFFIX, (json.dumps(meta, indent=1) + "\n").encode(), "predictions metadata"
  )
  return meta


def evaluate_workdir(config, workdir: str, step: int | None = None) -> tuple[int, dict[str, float]]:
  """(the checkpoint's step, its metrics on `data.eval_dir`, `train.max_eval_rows` rows at most);
  checkpoint `step` (default: the latest) or a one-line error, never another."""
  _, eval_ds = data_lib.resolve_datasets(config)
  evaluation.check_schema(load_schema(workdir), eval_ds)
  run, state = restore(config, workdir, step)
  cols, strays = score_dataset(
    run, state, eval_ds, config.train.eval_batch_size, max_rows=config.train.max_eval_rows
  )
  log_strays(f"evaluate {eval_ds.directory}", strays)
  return int(jax.device_get(state.step)), evaluation.compute_metrics(cols, eval_ds.schema)
