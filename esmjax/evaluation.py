"""Scoring a whole dataset and computing the global metrics of DESIGN.md §2.

Predictions are gathered to the host for the whole evaluation set, so AUC and GAUC are exact and
global (never averaged over batches).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from esmjax import metrics as metrics_lib
from esmjax import sharding as sh
from esmjax.data import dataset as ds_lib
from esmjax.data import pipeline
from esmjax.steps import BATCH_KEYS

HOST_KEYS = ("labels", "user", "sample_id", "truth")


def predict_dataset(predict_fn: Callable, state, dataset: ds_lib.Dataset, batch_size: int, mesh,
                    max_rows: int = -1) -> dict[str, np.ndarray]:
  """Scores every row (in file order, this process's blocks); returns predictions + host columns.

  `batch_size` is global; each process feeds batch_size / process_count rows per step.
  """
  pc, pi = jax.process_count(), jax.process_index()
  local_bs = batch_size // pc
  out: dict[str, list[np.ndarray]] = {}
  seen = 0
  for batch, n in pipeline.eval_batches(dataset, local_bs, process_index=pi, process_count=pc):
    dev = sh.put_batch({k: batch[k] for k in BATCH_KEYS}, mesh)
    preds = sh.to_host_local(predict_fn(state, dev), mesh)
    cols = {**{k: v for k, v in preds.items()}, **{k: batch[k] for k in HOST_KEYS if k in batch}}
    for k, v in cols.items():
      out.setdefault(k, []).append(np.asarray(v)[:n])
    seen += n
    if 0 < max_rows <= seen * pc:
      break
  return {k: np.concatenate(v) for k, v in out.items()}


def compute_metrics(cols: dict[str, np.ndarray], schema: ds_lib.Schema) -> dict[str, float]:
  """Global metrics from host columns (all processes' rows gathered by the caller)."""
  labels = {name: cols["labels"][:, i].astype(np.float64) for i, name in enumerate(schema.labels)}
  preds = {k: cols[k].astype(np.float64) for k in ("pctr", "pcvr", "pctcvr", "pctavr") if k in cols}
  truth = None
  if "truth" in cols and "would_buy" in schema.truth:
    truth = {name: cols["truth"][:, i].astype(np.float64) for i, name in enumerate(schema.truth)
             if name in metrics_lib.TRUTH_KEYS}
  return metrics_lib.evaluate(preds, labels, cols["user"], truth=truth)


def evaluate(predict_fn: Callable, state, dataset: ds_lib.Dataset, batch_size: int, mesh,
             max_rows: int = -1) -> dict[str, float]:
  cols = predict_dataset(predict_fn, state, dataset, batch_size, mesh, max_rows)
  cols = sh.gather_host_columns(cols)
  return compute_metrics(cols, dataset.schema)
