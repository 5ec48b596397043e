"""The Python API for notebooks and scripts: `esmjax.train(config)` and `esmjax.load(workdir)`.

    import esmjax
    summary = esmjax.train(config, workdir="workdirs/quick")  # what `--mode=train` does
    model = esmjax.load("workdirs/quick")                     # config and schema from the workdir
    preds = model.predict(summary["eval_dir"])                # {"pctr", "pcvr", "pctcvr", ...}

Everything here is a thin layer over the trainer and `esmjax.serving.predict`: the same restore path
(orbax, with this process's shardings), the same schema check and the same predict step (stray
ids scored as OOV, see `esmjax.common.inputs`) as the command line's predict and evaluate modes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from esmjax.common import inputs

INPUT_KEYS = inputs.INPUT_KEYS


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """workdirs/<model>-<UTC time>, as the command line does."""
  return os.path.join(
    "workdirs", f"{config.model.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
  )


def train(config: ml_collections.ConfigDict, workdir: str | None = None) -> dict[str, Any]:
  """Trains and evaluates `config` in `workdir` (resuming from its latest checkpoint, like the CLI).

  Returns the run summary (also written to `<workdir>/summary.json`): `metrics` (the final
  evaluation: `ctr/auc`, `cvr/auc`, …), `steps`, `examples_per_sec`, `train_dir`, `eval_dir`,
  `config`, and `workdir`.
  """
  from esmjax.common import absl_flags, compile_cache
  from esmjax.config import defaults as config_lib
  from esmjax.training import trainer

  absl_flags.ensure_parsed()
  config_lib.validate(config)
  compile_cache.enable(config)
  workdir = workdir or default_workdir(config)
  summary = trainer.train_and_evaluate(config, workdir)
  return {**summary, "workdir": workdir}


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (see `esmjax.serving.predict.saved_config`)."""
  from esmjax.serving import predict

  return predict.saved_config(workdir)


def load(
  workdir: str, config: ml_collections.ConfigDict | None = None, step: int | None = None
) -> Model:
  """Checkpoint `step` (default: the latest) of `workdir` as a `Model` (config from the workdir
  unless given). A checkpoint that cannot be read raises
  `esmjax.checkpoints.checkpoint.CheckpointError`
  naming it: no older checkpoint is loaded in its place."""
  from esmjax.serving import predict

  run, state = predict.load(workdir, config, step)
  return Model(run, state, workdir)


class Model:
  """A trained model: `predict` rows, `evaluate` a dataset, `export` a serving artifact.

  Attributes: `config` (ml_collections.ConfigDict), `schema` (esmjax.common.schema.Schema),
  `workdir`,
  `step` (the checkpoint's step), `run` and `state` (the trainer's objects), and `oov_counts`:
  {field: ids scored as OOV} of the last `predict` / `evaluate` call.
  """

  def __init__(self, run, state, workdir: str):
    import jax

    from esmjax.serving import predict

    self.run, self.state, self.workdir = run, state, workdir
    self.config, self.schema = run.config, run.schema
    self.step = int(jax.device_get(state.step))
    self.oov_counts: dict[str, int] = {}
    self._step_fn = predict.jit_predict_step(run)

  def __repr__(self) -> str:
    return f"Model({self.config.model.name!r}, step={self.step}, workdir={self.workdir!r})"

  def predict(self, data, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Probabilities for every row of `data`, as NumPy arrays of shape [n].

    `data` is a dict of arrays with the dataset's input columns (`sparse` int32 [n, F], `mv_ids`
    int32 [n, L], `mv_w` float32 [n, L], `dense` float32 [n, Dn]; other keys are ignored) -> returns
    `pctr`, `pcvr`, `pctcvr` (and `pctavr` for ESM2). Or a dataset directory / `Dataset` of the
    trained schema -> the same plus its `sample_id`, `labels`, `user` (and `truth`) columns, rows
    in file order; a dataset of another schema raises DatasetError naming the difference.

    Ids outside their field's vocabulary (negative ones included) are scored as the field's OOV
    row (id 1): counted per field in `oov_counts` and logged. Ids that are not integers, and
    non-finite weights or dense values, raise ValueError.
    """
    from esmjax.data.format import dataset as ds_lib

    bs = int(batch_size or self.config.train.eval_batch_size)
    if isinstance(data, (str, os.PathLike, ds_lib.Dataset)):
      return self._predict_dataset(data, bs)
    if isinstance(data, Mapping):
      return self._predict_rows(data, bs)
    raise TypeError(
      f"predict: expected a dict of arrays, a dataset directory or a Dataset, got "
      f"{type(data).__name__}"
    )

  def evaluate(self, data) -> dict[str, float]:
    """The global metrics (`esmjax.evaluation`) on a dataset directory or `Dataset` of the
    trained schema (another schema raises DatasetError naming the difference)."""
    from esmjax.evaluation import scoring as evaluation

    dataset = self._open(data)
    cols = self._predict_dataset(dataset, self.config.train.eval_batch_size)
    return evaluation.compute_metrics(cols, dataset.schema)

  def export(self, path: str, batch_size: int | None = None, platforms=None) -> dict[str, Any]:
    """Writes a jax.export serving artifact (see `esmjax.serving.export`); returns its signature."""
    from esmjax.serving import export as export_lib

    return export_lib.export_state(
      self.run, self.state, path, batch_size=batch_size, platforms=platforms, workdir=self.workdir
    )

  # -- internals ----------------------------------------------------------------------------------

  def _open(self, data):
    from esmjax.data.format import dataset as ds_lib

    return data if isinstance(data, ds_lib.Dataset) else ds_lib.open_dataset(os.fspath(data))

  def _predict_dataset(self, data, bs: int) -> dict[str, np.ndarray]:
    from esmjax.serving import predict

    dataset = self._open(data)
    cols, self.oov_counts = predict.score_dataset(self.run, self.state, dataset, bs, self._step_fn)
    predict.log_strays(f"predict {dataset.directory}", self.oov_counts)
    return cols

  def _predict_rows(self, batch: Mapping[str, Any], bs: int) -> dict[str, np.ndarray]:
    from esmjax.core import sharding as sh
    from esmjax.serving import predict

    rows, counts = check_inputs(self.schema, batch)
    n = len(rows["sparse"])
    mesh = self.run.mesh
    # Pad to a power of two (at most `bs`), a multiple of the devices: few distinct shapes compile.
    chunk = _round_up(min(bs, 1 << max(n - 1, 0).bit_length()), mesh.size)
    out: dict[str, list[np.ndarray]] = {}
    for lo in range(0, max(n, 1), chunk):  # zero rows still run one (all-PAD) batch: same keys
      part = {k: v[lo : lo + chunk] for k, v in rows.items()}
      m = len(part["sparse"])
      if m < chunk:  # PAD rows (id 0, weight 0), dropped below
        part = {
          k: np.concatenate([v, np.zeros((chunk - m,) + v.shape[1:], v.dtype)])
          for k, v in part.items()
        }
      preds = sh.to_host_local(self._step_fn(self.state, sh.put_batch(part, mesh)), mesh)
      for k, v in preds.items():
        out.setdefault(k, []).append(np.asarray(v)[:m])
    cols = {k: np.concatenate(v) for k, v in out.items()}
    self.oov_counts = inputs.add_counts(counts, predict.pop_strays(self.schema, cols))
    predict.log_strays("predict", self.oov_counts)
    return cols


def check_inputs(schema, batch: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """(the input columns of `batch` as arrays of the model's dtypes, {field: ids mapped to OOV}).

  Clear errors for a missing input, a wrong shape, or values no input can hold; ids outside their
  field's vocabulary are mapped to OOV before the cast (see `esmjax.common.inputs`).
  """
  cols = inputs.columns(schema)
  missing = [c.name for c in cols if c.name not in batch]
  if missing:
    raise ValueError(
      f"predict: batch lacks {missing}; a batch has {list(INPUT_KEYS)} (labels not needed)"
    )
  arrays = {c.name: np.asarray(batch[c.name]) for c in cols}
  n = len(arrays["sparse"]) if arrays["sparse"].ndim else 0
  out, counts = {}, {}
  for c in cols:
    a = arrays[c.name]
    if a.ndim != 2 or a.shape != (n, c.width):
      raise ValueError(
        f"predict: batch[{c.name!r}] has shape {a.shape}, expected ({n}, {c.width}) "
        "for this model's schema"
      )
    inputs.check_values(c, a, "predict")
    if c.vocab is None:
      out[c.name] = a.astype(c.dtype, copy=False)
    else:
      out[c.name], mapped = inputs.map_strays(c, a)
      inputs.add_counts(counts, mapped)
  return out, counts


def _round_up(x: int, m: int) -> int:
  return max(m, -(-x // m) * m)
