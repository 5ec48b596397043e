"""Scoring a whole dataset and computing its global metrics (docs/design.md, Evaluation).

Predictions are gathered to the host for the whole evaluation set, so AUC and GAUC are exact and
global (never averaged over batches).

A task whose predictions are (nearly) constant, as a dead tower's are, has an AUC of about 0.5
that looks like a weak model rather than a broken one. Every evaluation therefore reports, per
prediction, `<task>/logit_std` (the spread of its logits over all evaluated rows,
`metrics.logit_std`) and `<task>/collapsed`: 1.0 when that spread is below COLLAPSED_LOGIT_STD,
with a warning naming the task; `collapsed_tasks(metrics)` lists them. Healthy models are far
above it: after one step on the tiny test worlds the smallest spread is 0.016.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from esmjax.core import sharding as sh
from esmjax.core.steps import BATCH_KEYS
from esmjax.data.format import dataset as ds_lib
from esmjax.data.pipeline import batches as pipeline
from esmjax.evaluation import metrics as metrics_lib

HOST_KEYS = ("labels", "user", "sample_id", "truth")
TASKS = {"pctr": "ctr", "pcvr": "cvr", "pctcvr": "ctcvr", "pctavr": "ctavr"}  # prediction -> task
COLLAPSED_LOGIT_STD = 1e-3  # a task's predictions are collapsed below this spread of their logits


def check_schema(schema: ds_lib.Schema, dataset: ds_lib.Dataset) -> None:
  """Raises DatasetError naming the first difference between the trained model's inputs and the
  dataset's (vocabulary sizes, multi-valued layouts, dense fields and their statistics): scoring
  such a dataset would read other rows than the ids meant, and exit 0."""
  diff = schema.input_difference(dataset.schema)
  if diff is not None:
    raise ds_lib.DatasetError(
      f"{dataset.directory}: its inputs differ from the trained model's ({diff}; model vs "
      "dataset): ingest it with --stats_from=<the training dataset>, so that it shares the "
      "training vocabularies and dense statistics"
    )


def predict_dataset(
  predict_fn: Callable, state, dataset: ds_lib.Dataset, batch_size: int, mesh, max_rows: int = -1
) -> dict[str, np.ndarray]:
  """Scores this process's rows (its blocks, in file order); returns predictions, host columns and
  `row`, each row's index in the file (all processes' rows sorted by it are in file order).

  `batch_size` is global; each process feeds batch_size / process_count rows per step.
  """
  pc, pi = jax.process_count(), jax.process_index()
  local_bs = batch_size // pc
  out: dict[str, list[np.ndarray]] = {}
  rows = pipeline.eval_row_index(dataset, process_index=pi, process_count=pc)
  batches = seen = 0
  for batch, n in pipeline.eval_batches(dataset, local_bs, process_index=pi, process_count=pc):
    dev = sh.put_batch({k: batch[k] for k in BATCH_KEYS}, mesh)
    preds = sh.to_host_local(predict_fn(state, dev), mesh)
    cols = {**{k: v for k, v in preds.items()}, **{k: batch[k] for k in HOST_KEYS if k in batch}}
    cols["row"] = rows[seen : seen + n]
    for k, v in cols.items():
      out.setdefault(k, []).append(np.asarray(v)[:n])
    batches, seen = batches + 1, seen + n
    # Counted in global batches, the same on every process: the predict step is collective, so
    # all processes must stop after the same batch (their valid rows may differ near the end).
    if 0 < max_rows <= batches * batch_size:
      break
  return {k: np.concatenate(v) for k, v in out.items()}


def compute_metrics(cols: dict[str, np.ndarray], schema: ds_lib.Schema) -> dict[str, float]:
  """Global metrics from host columns (all processes' rows gathered by the caller)."""
  labels = {name: cols["labels"][:, i].astype(np.float64) for i, name in enumerate(schema.labels)}
  if "daction" not in labels and ("cart" in labels or "wish" in labels):
    # DAction is cart ∨ wish (the ESM2 paper's definition), as ESM2 trains on such logs.
    labels["daction"] = np.maximum(labels.get("cart", 0.0), labels.get("wish", 0.0))
  preds = {k: cols[k].astype(np.float64) for k in ("pctr", "pcvr", "pctcvr", "pctavr") if k in cols}
  truth = None
  if "truth" in cols and "would_buy" in schema.truth:
    truth = {
      name: cols["truth"][:, i].astype(np.float64)
      for i, name in enumerate(schema.truth)
      if name in metrics_lib.TRUTH_KEYS
    }
  out = metrics_lib.evaluate(preds, labels, cols["user"], truth=truth)
  out.update(collapse_flags(preds))
  return out


def collapse_flags(preds: dict[str, np.ndarray]) -> dict[str, float]:
  """{`<task>/logit_std`, `<task>/collapsed` (1.0 or 0.0)} per prediction; warns for each collapsed
  task, naming it and its spread."""
  out = {}
  for key, task in TASKS.items():
    if key not in preds:
      continue
    spread = metrics_lib.logit_std(preds[key])
    collapsed = spread < COLLAPSED_LOGIT_STD  # False for nan (fewer than two rows)
    out[f"{task}/logit_std"], out[f"{task}/collapsed"] = spread, float(collapsed)
    if collapsed:
      p = preds[key]
      logging.warning(
        "evaluation: the %s predictions are collapsed (a dead tower?): their "
        "logits' std is %.3g over %d rows (below %g), %s in [%.6g, %.6g]; %s/auc "
        "means nothing",
        task,
        spread,
        len(p),
        COLLAPSED_LOGIT_STD,
        key,
        float(np.min(p)),
        float(np.max(p)),
        task,
      )
  return out


def collapsed_tasks(metrics: dict[str, float]) -> list[str]:
  """The tasks flagged `<task>/collapsed` in `metrics`, in task order (for summary.json)."""
  return [t for t in TASKS.values() if metrics.get(f"{t}/collapsed", 0.0) == 1.0]


def evaluate(
  predict_fn: Callable, state, dataset: ds_lib.Dataset, batch_size: int, mesh, max_rows: int = -1
) -> dict[str, float]:
  cols = predict_dataset(predict_fn, state, dataset, batch_size, mesh, max_rows)
  cols = sh.gather_host_columns(cols)
  return compute_metrics(cols, dataset.schema)


def evaluate_run(run, state, dataset: ds_lib.Dataset) -> dict[str, float]:
  """`evaluate` with a `core.run.Run`'s jitted predict step, mesh and evaluation settings."""
  train = run.config.train
  return evaluate(
    run.predict_step, state, dataset, train.eval_batch_size, run.mesh, train.max_eval_rows
  )
