"""The Python API for notebooks and scripts: `esmjax.train(config)` and `esmjax.load(workdir)`.

    import esmjax
    summary = esmjax.train(config, workdir="workdirs/quick")  # what `--mode=train` does
    model = esmjax.load("workdirs/quick")                     # config and schema from the workdir
    preds = model.predict(summary["eval_dir"])                # {"pctr", "pcvr", "pctcvr", ...}

Everything here is a thin layer over the trainer and `esmjax.predict`: the same jitted predict
step, the same restore path (orbax, with this process's shardings), the same checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import ml_collections
import numpy as np

SUMMARY_FILE = "summary.json"
INPUT_KEYS = ("sparse", "mv_ids", "mv_w", "dense")  # what a model reads (labels are not inputs)


def _parse_absl_flags() -> None:
  # grain reads absl flags; outside an absl app (a notebook) they must count as parsed.
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """workdirs/<model>-<UTC time>, as the command line does."""
  return os.path.join("workdirs", f"{config.model.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")


def train(config: ml_collections.ConfigDict, workdir: str | None = None) -> dict[str, Any]:
  """Trains and evaluates `config` in `workdir` (resuming from its latest checkpoint, like the CLI).

  Returns the run summary (also written to `<workdir>/summary.json`): `metrics` (the final
  evaluation: `ctr/auc`, `cvr/auc`, …), `steps`, `examples_per_sec`, `train_dir`, `eval_dir`,
  `config`, and `workdir`.
  """
  from esmjax import config as config_lib
  from esmjax import trainer

  _parse_absl_flags()
  config_lib.validate(config)
  workdir = workdir or default_workdir(config)
  summary = trainer.train_and_evaluate(config, workdir)
  return {**summary, "workdir": workdir}


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with: from `summary.json`, else from the latest checkpoint.

  Rebuilt on top of `default_config()` so tuples stay tuples; data directories that no longer
  exist (a model copied to another machine) are cleared, since loading a model does not read them.
  """
  from esmjax import config as config_lib

  saved = None
  path = os.path.join(workdir, SUMMARY_FILE)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f).get("config")
  if saved is None:
    from esmjax import checkpoint as ckpt_lib

    saved = ckpt_lib.read_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"{workdir}: no {SUMMARY_FILE} and no checkpoint to read the config from; "
                            "pass config= explicitly")
  config = config_lib.default_config()
  try:
    config.update(saved)
  except (TypeError, ValueError):  # a key whose type changed since: take the saved values as they are
    config = ml_collections.ConfigDict(saved)
  if not (os.path.isdir(config.data.train_dir or "/nonexistent")
          and os.path.isdir(config.data.eval_dir or "/nonexistent")):
    config.data.train_dir = config.data.eval_dir = ""
  return config


def load(workdir: str, config: ml_collections.ConfigDict | None = None) -> "Model":
  """The latest checkpoint of `workdir` as a `Model` (config from the workdir unless given)."""
  import jax

  from esmjax import predict

  _parse_absl_flags()
  if config is None:
    config = saved_config(workdir)
    if config.mesh.num_devices > jax.device_count():  # trained on more devices than are here
      config.mesh.num_devices = -1
  run, state = predict.restore(config, workdir)
  return Model(run, state, workdir)


class Model:
  """A trained model: `predict` rows, `evaluate` a dataset, `export` a serving artifact.

  Attributes: `config` (ml_collections.ConfigDict), `schema` (esmjax.data.dataset.Schema),
  `workdir`, `step` (the checkpoint's step), `run` and `state` (the trainer's objects).
  """

  def __init__(self, run, state, workdir: str):
    import jax

    self.run, self.state, self.workdir = run, state, workdir
    self.config, self.schema = run.config, run.schema
    self.step = int(jax.device_get(state.step))

  def __repr__(self) -> str:
    return f"Model({self.config.model.name!r}, step={self.step}, workdir={self.workdir!r})"

  def predict(self, data, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Probabilities for every row of `data`, as NumPy arrays of shape [n].

    `data` is a dict of arrays with the dataset's input columns (`sparse` int32 [n, F], `mv_ids`
    int32 [n, L], `mv_w` float32 [n, L], `dense` float32 [n, Dn]; other keys are ignored) -> returns
    `pctr`, `pcvr`, `pctcvr` (and `pctavr` for ESM2). Or a dataset directory / `Dataset` -> the same
    plus its `sample_id`, `labels`, `user` (and `truth`) columns, rows in file order.
    """
    from esmjax.data import dataset as ds_lib

    bs = int(batch_size or self.config.train.eval_batch_size)
    if isinstance(data, (str, os.PathLike, ds_lib.Dataset)):
      return self._predict_dataset(data, bs)
    if isinstance(data, Mapping):
      return self._predict_rows(data, bs)
    raise TypeError(f"predict: expected a dict of arrays, a dataset directory or a Dataset, got "
                    f"{type(data).__name__}")

  def evaluate(self, data) -> dict[str, float]:
    """The global metrics (DESIGN.md §2) of this model on a dataset directory or `Dataset`."""
    from esmjax import evaluation

    return evaluation.compute_metrics(self._predict_dataset(data, self.config.train.eval_batch_size),
                                      self._open(data).schema)

  def export(self, path: str, batch_size: int | None = None, platforms=None) -> dict[str, Any]:
    """Writes a jax.export serving artifact (see `esmjax.export`); returns its signature."""
    from esmjax import export as export_lib

    return export_lib.export_state(self.run, self.state, path, batch_size=batch_size,
                                   platforms=platforms, workdir=self.workdir)

  # -- internals ----------------------------------------------------------------------------------

  def _open(self, data):
    from esmjax.data import dataset as ds_lib

    return data if isinstance(data, ds_lib.Dataset) else ds_lib.open_dataset(os.fspath(data))

  def _predict_dataset(self, data, bs: int) -> dict[str, np.ndarray]:
    from esmjax import evaluation
    from esmjax import predict
    from esmjax import sharding as sh

    dataset = self._open(data)
    predict._check_schema(self.run, dataset)
    bs = _round_up(bs, self.run.mesh.size)
    cols = evaluation.predict_dataset(self.run.predict_step, self.state, dataset, bs, self.run.mesh)
    return sh.gather_host_columns(cols)

  def _predict_rows(self, batch: Mapping[str, Any], bs: int) -> dict[str, np.ndarray]:
    from esmjax import sharding as sh

    rows = check_inputs(self.schema, batch)
    n = len(rows["sparse"])
    # Pad to a power of two (at most `bs`), a multiple of the devices: few distinct shapes compile.
    chunk = _round_up(min(bs, 1 << max(n - 1, 0).bit_length()), self.run.mesh.size)
    out: dict[str, list[np.ndarray]] = {}
    for lo in range(0, max(n, 1), chunk):  # zero rows still run one (all-PAD) batch: same keys
      part = {k: v[lo:lo + chunk] for k, v in rows.items()}
      m = len(part["sparse"])
      if m < chunk:  # PAD rows (id 0, weight 0), dropped below
        part = {k: np.concatenate([v, np.zeros((chunk - m,) + v.shape[1:], v.dtype)]) for k, v in part.items()}
      preds = sh.to_host_local(self.run.predict_step(self.state, sh.put_batch(part, self.run.mesh)),
                               self.run.mesh)
      for k, v in preds.items():
        out.setdefault(k, []).append(np.asarray(v)[:m])
    return {k: np.concatenate(v) for k, v in out.items()}


def input_spec(schema) -> dict[str, tuple[str, int]]:
  """{input name: (dtype, width)}: the model's inputs, per row, in the dataset's column order."""
  return {"sparse": ("int32", len(schema.sparse)), "mv_ids": ("int32", schema.mv_total_len),
          "mv_w": ("float32", schema.mv_total_len), "dense": ("float32", len(schema.dense))}


def check_inputs(schema, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The input columns of `batch` as arrays of the right dtypes; a clear error for a wrong shape."""
  spec = input_spec(schema)
  missing = [k for k in spec if k not in batch]
  if missing:
    raise ValueError(f"predict: batch lacks {missing}; a batch has {list(spec)} (labels not needed)")
  out = {k: np.asarray(batch[k]).astype(dt, copy=False) for k, (dt, _) in spec.items()}
  n = len(out["sparse"])
  for k, (dt, width) in spec.items():
    if out[k].ndim != 2 or out[k].shape != (n, width):
      raise ValueError(f"predict: batch[{k!r}] has shape {np.shape(batch[k])}, expected ({n}, {width}) "
                       "for this model's schema")
  return out


def _round_up(x: int, m: int) -> int:
  return max(m, -(-x // m) * m)
