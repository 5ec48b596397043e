"""GBDT, the ESM2 paper's baseline: LightGBM (the optional `gbdt` extra, `pip install .[gbdt]`)
on the same features as the networks, cached like the networks' runs (experiments/runs.py)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from typing import Any

import numpy as np

from experiments import runs

PARAMS = {
  "objective": "binary",
  "learning_rate": 0.05,
  "num_leaves": 63,
  "min_data_in_leaf": 50,
  "feature_fraction": 0.8,
  "bagging_fraction": 0.8,
  "bagging_freq": 1,
  "max_cat_to_onehot": 8,
  "verbose": -1,
  "num_threads": 2,
}
ROUNDS = {"full": 300, "quick": 30}


def available() -> bool:
  return importlib.util.find_spec("lightgbm") is not None


def features(cols: dict[str, np.ndarray], schema) -> tuple[np.ndarray, list[str], list[int]]:
  """Single-valued ids (categorical where the vocabulary is small, raw id otherwise), multi-valued
  fields pooled as (non-PAD count, weight sum), dense values as they are."""
  feats, names, categorical = [], [], []
  for j, f in enumerate(schema.sparse):
    if f.vocab_size <= 256:
      categorical.append(len(names))
    feats.append(cols["sparse"][:, j].astype(np.float32))
    names.append(f"id_{f.name}")
  off = 0
  for f in schema.multi:
    ids = cols["mv_ids"][:, off : off + f.max_len]
    w = cols["mv_w"][:, off : off + f.max_len]
    feats += [(ids > 0).sum(1).astype(np.float32), w.sum(1).astype(np.float32)]
    names += [f"count_{f.name}", f"wsum_{f.name}"]
    off += f.max_len
  for j, f in enumerate(schema.dense):
    feats.append(cols["dense"][:, j].astype(np.float32))
    names.append(f"dense_{f.name}")
  return np.stack(feats, 1), names, categorical


def run(
  config, mode: str, *, use_cache: bool = True, args: argparse.Namespace | None = None
) -> dict[str, Any] | None:
  """LightGBM CVR model on clicked training rows + one CTR model on all; pCTCVR = pCTR·pCVR."""
  import lightgbm as lgb

  from esmjax.evaluation import metrics

  params = {**PARAMS, "seed": int(config.train.seed)}
  rounds = ROUNDS[mode]
  key = runs.run_key(
    config, extra=json.dumps({"gbdt": params, "rounds": rounds, "lgb": lgb.__version__})
  )
  path = runs.cache_path(config, key)
  if use_cache and os.path.exists(path):
    with open(path) as f:
      rec = json.load(f)
    runs.print_run("gbdt", rec, cached=True)
    return rec
  if args is not None and args.cached_only:
    args.missing.append(f"gbdt seed {config.train.seed}")
    return None
  t = time.time()
  train_ds, _ = runs.datasets(config)
  schema = train_ds.schema
  tr, ev = runs.read_train_rows(config), runs.read_eval_rows(config)
  x, names, cat = features(tr, schema)
  xe, _, _ = features(ev, schema)
  li = {n: i for i, n in enumerate(schema.labels)}
  click, buy = (
    tr["labels"][:, li["click"]].astype(np.float32),
    tr["labels"][:, li["buy"]].astype(np.float32),
  )

  def fit(xx, yy):
    d = lgb.Dataset(xx, yy, feature_name=names, categorical_feature=cat, free_raw_data=True)
    return lgb.train(params, d, num_boost_round=rounds)

  ctr_model = fit(x, click)
  clicked = click > 0
  cvr_model = fit(x[clicked], buy[clicked])
  pctr, pcvr = ctr_model.predict(xe), cvr_model.predict(xe)
  labels = {
    n: ev["labels"][:, i].astype(np.float64) for n, i in li.items() if n in metrics.LABEL_KEYS
  }
  truth = (
    {
      n: ev["truth"][:, i].astype(np.float64)
      for i, n in enumerate(schema.truth)
      if n in metrics.TRUTH_KEYS
    }
    if schema.truth
    else None
  )
  m = metrics.evaluate(
    {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr}, labels, ev["user"], truth=truth
  )
  rec = {
    "key": key,
    "model": "gbdt",
    "seed": int(config.train.seed),
    "metrics": {k: float(v) for k, v in m.items()},
    "train_rows": int(len(click)),
    "rounds": rounds,
    "params": params,
    "lightgbm": lgb.__version__,
    "wall_seconds": time.time() - t,
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(rec, f, indent=1)
  runs.print_run("gbdt", rec, cached=False)
  return rec
