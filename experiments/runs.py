"""Training runs of the experiments, cached by their exact config, and the rows they read.

`run(config)` is one full `esmjax.training.trainer.train_and_evaluate`; its record (final metrics,
steps,
rows, seconds) is cached under <cache_dir>/experiment-runs/<key>.json, the key being a hash of how
the config differs from esmjax's default config. Scripts that need the same run share it, and
`--cached_only` aggregates what has been run (listing what was left out).

Two options score the eval rows again from the run's checkpoint (one more pass over them):
`groups=True` adds AUCs per user purchase-count group (experiments/groups.py), and
`predictions=True` keeps the per-row predictions in <key>.preds.npz beside the record (read by
experiments/eval_size_probe.py).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

CACHE_VERSION = 1  # bump when a run's record changes meaning: part of every cache key
PRED_KEYS = ("pctr", "pcvr", "pctcvr", "pctavr")


def _config_diff(config) -> dict[str, Any]:
  """{dotted key: value} where `config` differs from esmjax's default config.

  Keyed by the difference, a run's record survives keys that are added to the default config
  later (with values that keep old behaviour); a changed default *value* is not seen — bump
  CACHE_VERSION or pass --no_cache when a default that changes results moves.
  """
  from esmjax.config import defaults as config_lib

  def flat(d, pre=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f"{pre}{k}."))
      else:
        out[f"{pre}{k}"] = v
    return out

  ref = flat(json.loads(config_lib.default_config().to_json_best_effort()))
  cur = flat(json.loads(config.to_json_best_effort()))
  # model.dtype=auto is keyed by what it resolves to on this machine, against float32 (the dtype
  # every run trained with before auto became the default): an f32 run keeps its key, and an
  # auto run that trains in bf16 shares the key of an explicit bfloat16 run.
  ref["model.dtype"] = "float32"
  if cur.get("model.dtype") == "auto":
    from esmjax.models import model as model_lib

    cur["model.dtype"] = model_lib.auto_dtype()[0]
  skip = ("checkpoint.", "data.cache_dir", "train.log_every")
  return {k: v for k, v in cur.items() if ref.get(k, object()) != v and not k.startswith(skip)}


def run_key(config, extra: str = "") -> str:
  blob = json.dumps(
    {"v": CACHE_VERSION, "config": _config_diff(config), "extra": extra}, sort_keys=True
  )
  return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_path(config, key: str) -> str:
  return os.path.join(config.data.cache_dir, "experiment-runs", f"{key}.json")


def predictions_path(config, key: str) -> str:
  return os.path.join(config.data.cache_dir, "experiment-runs", f"{key}.preds.npz")


def _complete(rec: dict, config, groups: bool, predictions: bool) -> bool:
  if groups and "groups" not in rec:
    return False
  return not predictions or os.path.exists(predictions_path(config, rec["key"]))


def run(
  config,
  *,
  groups: bool = False,
  predictions: bool = False,
  use_cache: bool = True,
  label: str = "",
  args: argparse.Namespace | None = None,
) -> dict[str, Any] | None:
  """Trains + evaluates `config`; returns {metrics, steps, train_rows, seconds[, groups]}.

  None when `args.cached_only` and the run is not in the cache (it is listed in `args.missing`).
  """
  from esmjax.training import trainer

  key = run_key(config)
  path = cache_path(config, key)
  name = label or config.model.name
  if use_cache and os.path.exists(path):
    with open(path) as f:
      rec = json.load(f)
    if _complete(rec, config, groups, predictions):
      print_run(name, rec, cached=True)
      _note_time(args, rec, cached=True)
      return rec
  if args is not None and args.cached_only:
    args.missing.append(f"{name} seed {config.train.seed}")
    print(f"  {name:<22} seed {config.train.seed}  not in the cache: left out", flush=True)
    return None
  t = time.time()
  work = tempfile.mkdtemp(prefix="esmjax-exp-")
  try:
    cfg = copy.deepcopy(config)
    if groups or predictions:
      cfg.checkpoint.enabled = True
      cfg.checkpoint.every_steps = 10**9
      cfg.checkpoint.keep = 1
    summary = trainer.train_and_evaluate(cfg, work)
    if summary.get("preempted"):  # stopped by a signal: no final evaluation, nothing to record
      raise SystemExit(f"{name} seed {config.train.seed}: stopped by {summary['preempted']}")
    rec = {
      "key": key,
      "model": config.model.name,
      "seed": int(config.train.seed),
      "metrics": {k: float(v) for k, v in summary["metrics"].items()},
      "steps": int(summary["steps"]),
      "train_rows": _train_rows(config),
      "train_seconds": float(summary["train_seconds"]),
      "eval_seconds": float(summary.get("eval_seconds", float("nan"))),
      "examples_per_sec": float(summary["examples_per_sec"]),
    }
    if groups or predictions:
      cols = score_eval(cfg, work)
      if groups:
        from experiments import groups as groups_lib

        train_ds, eval_ds = datasets(cfg)
        rec["groups"] = groups_lib.purchase_group_aucs(cols, eval_ds.schema, read_train_rows(cfg))
      if predictions:
        out = predictions_path(config, key)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        keep = {k: cols[k].astype(np.float32) for k in PRED_KEYS if k in cols}
        np.savez(out + ".tmp.npz", sample_id=cols["sample_id"], **keep)
        os.replace(out + ".tmp.npz", out)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  rec["wall_seconds"] = time.time() - t
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(rec, f, indent=1)
  os.replace(path + ".tmp", path)
  print_run(name, rec, cached=False)
  _note_time(args, rec, cached=False)
  return rec


def _note_time(args: argparse.Namespace | None, rec: dict, cached: bool) -> None:
  """Records on `args.run_times` {key: (wall seconds of the run when it trained, cached)}: the
  results say how long their runs took, also those an earlier invocation trained."""
  if args is not None and hasattr(args, "run_times"):
    args.run_times[rec["key"]] = (float(rec.get("wall_seconds", float("nan"))), cached)


def load_predictions(config, rec: dict) -> dict[str, np.ndarray]:
  """The per-row eval predictions a `run(..., predictions=True)` kept (file order)."""
  with np.load(predictions_path(config, rec["key"])) as z:
    return {k: z[k] for k in z.files}


def print_run(label: str, rec: dict, cached: bool) -> None:
  m = rec["metrics"]
  print(
    f"  {label:<22} seed {rec['seed']}  rows {rec['train_rows']:>9,}  "
    f"CVR {m.get('cvr/auc', float('nan')):.4f}  CTCVR {m.get('ctcvr/auc', float('nan')):.4f}  "
    f"ES-CVR {m.get('cvr/entire_space_auc', float('nan')):.4f}  "
    + ("(cached)" if cached else f"{rec.get('wall_seconds', 0):.0f}s"),
    flush=True,
  )


# ---------------------------------------------------------------------------------------------
# Datasets and rows.


def datasets(config):
  """(train, eval) datasets of `config` (the synthetic world generated once if needed)."""
  from esmjax.core import feed as data_lib

  return data_lib.resolve_datasets(config)


def train_blocks_used(config, train_ds) -> int:
  n = train_ds.num_blocks
  f = config.data.train_fraction
  return n if f >= 1.0 else max(1, int(round(n * f)))  # as esmjax.data.pipeline takes them


def _train_rows(config) -> int:
  train_ds, _ = datasets(config)
  rows = train_blocks_used(config, train_ds) * int(config.data.synthetic.block_rows)
  return int(min(rows, train_ds.num_rows))  # every block is full but the last


def read_train_rows(config) -> dict[str, np.ndarray]:
  """The training rows a run of `config` uses (the leading blocks), concatenated."""
  from esmjax.data.format import dataset as ds_lib

  train_ds, _ = datasets(config)
  src = train_ds.block_source()
  return ds_lib.concat_blocks([src[i] for i in range(train_blocks_used(config, train_ds))])


def read_eval_rows(config, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
  """The eval rows (file order, at most `train.max_eval_rows`); only `columns` if given."""
  _, eval_ds = datasets(config)
  src = eval_ds.block_source()
  parts: dict[str, list[np.ndarray]] = {}
  for i in range(len(src)):
    for k, v in src[i].items():
      if columns is None or k in columns:
        parts.setdefault(k, []).append(v)
  cols = {k: np.concatenate(v) for k, v in parts.items()}
  n = config.train.max_eval_rows
  return {k: v[:n] for k, v in cols.items()} if n > 0 else cols


def score_eval(config, workdir: str) -> dict[str, np.ndarray]:
  """Predictions for every eval row from the checkpoint in `workdir`, with the eval rows' host
  columns (labels, user, sample_id, truth, dense), in file order."""
  from esmjax.evaluation import scoring as evaluation
  from esmjax.serving import predict

  _, eval_ds = datasets(config)
  r, state = predict.restore(config, workdir)
  cols = evaluation.predict_dataset(
    r.predict_step, state, eval_ds, config.train.eval_batch_size, r.mesh, config.train.max_eval_rows
  )
  ev = read_eval_rows(config, ("sample_id", "dense"))
  n = len(ev["sample_id"])
  cols = {**{k: v[:n] for k, v in cols.items()}, "dense": ev["dense"]}
  if not np.array_equal(cols["sample_id"], ev["sample_id"]):
    raise RuntimeError("predictions and eval rows are not aligned (sample_id differs)")
  return cols
