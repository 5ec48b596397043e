"""Scoring a whole dataset and computing its global metrics (docs/design.md, Evaluation).

AUC and GAUC are exact and global (never averaged over batches): computed over the whole
evaluation set, either on the host (predictions gathered to NumPy, esmjax.evaluation.metrics) or on
the
device (predictions and the label columns stay on the accelerator and are sorted there,
esmjax.evaluation.device_metrics; the host holds one batch at a time). `metrics_on` picks: 'auto'
is the
device on a GPU with one process, the host otherwise (on CPU both are the same memory, and the
host path serves several processes by gathering their rows).

A task whose predictions are (nearly) constant, as a dead tower's are, has an AUC of about 0.5
that looks like a weak model rather than a broken one. Every evaluation therefore reports, per
prediction, `<task>/logit_std` (the spread of its logits, `metrics.logit_std`, over the rows the
task is scored and trained on: the clicked rows for CVR, every row for the others) and
`<task>/collapsed`: 1.0 when that spread is below COLLAPSED_LOGIT_STD, with a warning naming the
task; `collapsed_tasks(metrics)` lists them. Judged over every row, a CVR tower that is constant
on the clicked rows escapes: a handful of unclicked rows with other values (3 of 8 000) lift the
spread above the threshold while `cvr/auc` is exactly 0.5. Healthy models are far
above it: after one step on the tiny test worlds the smallest spread is 0.016.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from esmjax.common import inputs
from esmjax.core import sharding as sh
from esmjax.core.steps import BATCH_KEYS
from esmjax.data.format import dataset as ds_lib
from esmjax.data.pipeline import batches as pipeline
from esmjax.evaluation import device_metrics
from esmjax.evaluation import metrics as metrics_lib

HOST_KEYS = ("labels", "user", "sample_id", "truth")
TASKS = {"pctr": "ctr", "pcvr": "cvr", "pctcvr": "ctcvr", "pctavr": "ctavr"}  # prediction -> task
COLLAPSED_LOGIT_STD = 1e-3  # a task's predictions are collapsed below this spread of their logits
METRICS_ON = ("auto", "device", "host")  # values of train.eval_metrics_on


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
  `row`, each row's index in the file (all processes' rows sorted by it are in file order); stray-id
  counts (`inputs.STRAYS_KEY`, from a counting predict step) as one row of sums per batch.

  `batch_size` is global; each process feeds batch_size / process_count rows per step.
  """
  pc, pi = jax.process_count(), jax.process_index()
  local_bs = batch_size // pc
  out: dict[str, list[np.ndarray]] = {}
  rows = pipeline.eval_row_index(dataset, process_index=pi, process_count=pc)
  batches = seen = 0

  def collect(preds, batch, n, seen):
    preds = sh.to_host_local(preds, mesh)
    cols = {**{k: v for k, v in preds.items()}, **{k: batch[k] for k in HOST_KEYS if k in batch}}
    cols["row"] = rows[seen : seen + n]
    for k, v in cols.items():
      v = np.asarray(v)[:n]
      if k == inputs.STRAYS_KEY:
        # Per-row stray counts, summed per batch: kept per row they would be 4 B x id fields a row,
        # ~4 GB on the 43 M rows of the Ali-CCP test split.
        v = v.sum(0, keepdims=True, dtype=np.int64)
      out.setdefault(k, []).append(v)

  # One batch in flight: batch i + 1 is read and decoded on the host while the devices score
  # batch i (dispatch is asynchronous), instead of host and devices taking turns.
  pending = None
  for batch, n in pipeline.eval_batches(dataset, local_bs, process_index=pi, process_count=pc):
    dev = sh.put_batch({k: batch[k] for k in BATCH_KEYS}, mesh)
    preds = predict_fn(state, dev)
    if pending is not None:
      collect(*pending)
    pending = (preds, batch, n, seen)
    batches, seen = batches + 1, seen + n
    # Counted in global batches, the same on every process: the predict step is collective, so
    # all processes must stop after the same batch (their valid rows may differ near the end).
    if 0 < max_rows <= batches * batch_size:
      break
  if pending is not None:
    collect(*pending)
  return {k: np.concatenate(v) for k, v in out.items()}


def compute_metrics(cols: dict[str, np.ndarray], schema: ds_lib.Schema) -> dict[str, float]:
  """Global metrics from host columns (all processes' rows gathered by the caller). The columns
  go in as they are (float32 predictions, uint8 labels): metrics.evaluate ranks float32 scores in
  8 B per row (esmjax.evaluation.ranking), where float64 copies would cost ~8 B per column and
  row before any sort."""
  labels = {name: cols["labels"][:, i] for i, name in enumerate(schema.labels)}
  if "daction" not in labels and ("cart" in labels or "wish" in labels):
    # DAction is cart ∨ wish (the ESM2 paper's definition), as ESM2 trains on such logs.
    labels["daction"] = np.maximum(labels.get("cart", 0), labels.get("wish", 0))
  preds = {k: cols[k] for k in ("pctr", "pcvr", "pctcvr", "pctavr") if k in cols}
  truth = None
  if "truth" in cols and "would_buy" in schema.truth:
    truth = {
      name: cols["truth"][:, i]
      for i, name in enumerate(schema.truth)
      if name in metrics_lib.TRUTH_KEYS
    }
  out = metrics_lib.evaluate(preds, labels, cols["user"], truth=truth)
  out.update(collapse_flags(preds, labels.get("click")))
  return out


def collapse_flags(
  preds: dict[str, np.ndarray], click: np.ndarray | None = None
) -> dict[str, float]:
  """{`<task>/logit_std`, `<task>/collapsed` (1.0 or 0.0)} per prediction, each task judged on its
  own rows: CVR on the clicked ones (`click` > 0; all rows when `click` is None), the others on
  all. Warns for each collapsed task, naming it, its rows and its spread."""
  spreads, rows = {}, {}
  for k, p in preds.items():
    p, rows[k] = np.asarray(p), (len(p), "rows")
    if k == "pcvr" and click is not None:
      p = p[np.asarray(click) > 0]
      rows[k] = (len(p), "clicked rows")
    spreads[k] = (
      (metrics_lib.logit_std(p), float(np.min(p)), float(np.max(p))) if len(p) else (np.nan,) * 3
    )
  return _collapse_from_spreads(spreads, rows)


def _collapse_from_spreads(spreads: dict, rows: dict) -> dict[str, float]:
  """collapse_flags from {prediction key: (logit std, min, max)} and {key: (rows, what rows)}."""
  out = {}
  for key, task in TASKS.items():
    if key not in spreads:
      continue
    spread, lo, hi = spreads[key]
    collapsed = spread < COLLAPSED_LOGIT_STD  # False for nan (fewer than two rows)
    out[f"{task}/logit_std"], out[f"{task}/collapsed"] = spread, float(collapsed)
    if collapsed:
      logging.warning(
        "evaluation: the %s predictions are collapsed (a dead tower?): their "
        "logits' std is %.3g over %d %s (below %g), %s in [%.6g, %.6g]; %s/auc "
        "means nothing",
        task,
        spread,
        *rows[key],
        COLLAPSED_LOGIT_STD,
        key,
        lo,
        hi,
        task,
      )
  return out


def collapsed_tasks(metrics: dict[str, float]) -> list[str]:
  """The tasks flagged `<task>/collapsed` in `metrics`, in task order (for summary.json)."""
  return [t for t in TASKS.values() if metrics.get(f"{t}/collapsed", 0.0) == 1.0]


def resolve_metrics_on(where: str) -> str:
  """'device' or 'host' for train.eval_metrics_on `where` on this backend and process count."""
  if where not in METRICS_ON:
    raise ValueError(f"train.eval_metrics_on={where!r} is not allowed; allowed: {list(METRICS_ON)}")
  if where == "auto":
    on_gpu = jax.default_backend() == "gpu"
    return "device" if on_gpu and jax.process_count() == 1 else "host"
  if where == "device" and (jax.process_count() > 1 or not device_metrics.supported()):
    logging.warning(
      "train.eval_metrics_on='device' needs one process and float64 on the device (%d processes, "
      "backend %s): the metrics are computed on the host",
      jax.process_count(),
      jax.default_backend(),
    )
    return "host"
  return where


def predict_dataset_on_device(
  predict_fn: Callable, state, dataset: ds_lib.Dataset, batch_size: int, mesh, max_rows: int = -1
) -> dict[str, jax.Array]:
  """predict_dataset's predictions and the label, user and truth columns, kept on the devices
  (one process): the host holds one batch at a time, whatever the number of rows."""
  out: dict[str, list[jax.Array]] = {}
  rows = sh.batch_sharding(mesh)
  batches = 0
  for batch, n in pipeline.eval_batches(dataset, batch_size):
    preds = predict_fn(state, sh.put_batch({k: batch[k] for k in BATCH_KEYS}, mesh))
    with jax.enable_x64(True):  # the user ids stay int64
      host = jax.device_put({k: batch[k] for k in HOST_KEYS if k in batch and k != "row"}, rows)
      for k, v in {**preds, **host}.items():
        out.setdefault(k, []).append(v if n == batch_size else v[:n])
    batches += 1
    if 0 < max_rows <= batches * batch_size:
      break
  with jax.enable_x64(True):
    return {k: _concatenate(v) for k, v in out.items()}


def _concatenate(parts: list[jax.Array], fan_in: int = 64) -> jax.Array:
  """jnp.concatenate in rounds of at most `fan_in` arrays: thousands of batches make no
  thousand-operand program (one compilation per shape signature)."""
  while len(parts) > 1:
    parts = [
      jnp.concatenate(parts[i : i + fan_in]) if len(parts[i : i + fan_in]) > 1 else parts[i]
      for i in range(0, len(parts), fan_in)
    ]
  return parts[0]


def compute_metrics_on_device(
  cols: dict[str, jax.Array], schema: ds_lib.Schema
) -> dict[str, float]:
  """compute_metrics on device columns (predict_dataset_on_device): the same metrics, sorted on
  the device (esmjax.evaluation.device_metrics); only the results come to the host."""
  with jax.enable_x64(True):
    labels = {name: cols["labels"][:, i] for i, name in enumerate(schema.labels)}
    if "daction" not in labels and ("cart" in labels or "wish" in labels):
      zero = jnp.zeros_like(cols["labels"][:, 0])
      labels["daction"] = jnp.maximum(labels.get("cart", zero), labels.get("wish", zero))
    labels = {k: v for k, v in labels.items() if k in metrics_lib.LABEL_KEYS}
    truth = {}
    if "truth" in cols and "would_buy" in schema.truth:
      truth = {
        name: cols["truth"][:, i]
        for i, name in enumerate(schema.truth)
        if name in metrics_lib.TRUTH_KEYS
      }
  preds = {k: cols[k] for k in TASKS if k in cols}
  out, spreads = device_metrics.evaluate(preds, labels, cols["user"], truth)
  rows = {k: (int(n), "clicked rows" if k == "pcvr" else "rows") for k, (*_, n) in spreads.items()}
  out.update(_collapse_from_spreads({k: v[:3] for k, v in spreads.items()}, rows))
  return out


def evaluate(
  predict_fn: Callable,
  state,
  dataset: ds_lib.Dataset,
  batch_size: int,
  mesh,
  max_rows: int = -1,
  metrics_on: str = "auto",
) -> dict[str, float]:
  """The global metrics of `dataset` scored by `predict_fn`, computed where `metrics_on` resolves
  to (resolve_metrics_on)."""
  where = resolve_metrics_on(metrics_on)
  logging.log_first_n(logging.INFO, "evaluation: metrics computed on the %s", 1, where)
  if where == "device":
    cols = predict_dataset_on_device(predict_fn, state, dataset, batch_size, mesh, max_rows)
    return compute_metrics_on_device(cols, dataset.schema)
  cols = predict_dataset(predict_fn, state, dataset, batch_size, mesh, max_rows)
  cols = sh.gather_host_columns(cols)
  return compute_metrics(cols, dataset.schema)


def evaluate_run(run, state, dataset: ds_lib.Dataset) -> dict[str, float]:
  """`evaluate` with a `core.run.Run`'s jitted predict step, mesh and evaluation settings."""
  train = run.config.train
  return evaluate(
    run.predict_step,
    state,
    dataset,
    train.eval_batch_size,
    run.mesh,
    train.max_eval_rows,
    train.get("eval_metrics_on", "auto"),
  )
