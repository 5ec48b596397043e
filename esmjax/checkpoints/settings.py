"""What a checkpoint's saved config means for a run that meets it: the keys that name the model
(`IDENTITY_KEYS`: another value is another model), the keys free to change on resume
(`RESUME_FREE_KEYS`), the settings that did change (`changed_settings`), which checkpoints are
kept (`preservation`, `best_score`), the config saved with a workdir's latest checkpoint
(`read_config`), and the errors `esmjax.checkpoints.checkpoint` raises."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import orbax.checkpoint as ocp

from esmjax.common import digest as digest_lib
from esmjax.config import compat
from esmjax.config import defaults as config_lib

CKPT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints.corrupt"
# Keys that define the model a checkpoint belongs to: a different value is a different model even
# where the array shapes happen to agree, so resuming across them is refused.
IDENTITY_KEYS = (
  "model.name",
  "model.embed_dim",
  "model.hidden",
  "model.activation",
  "model.dense_mode",
  "embedding.optimizer",
  "embedding.dtype",
  "optimizer.name",
)
# Keys expected to change between a run and its resumption (never worth a warning).
RESUME_FREE_KEYS = (
  "checkpoint.",
  "distributed.",
  "mesh.num_devices",
  "train.num_steps",
  "train.num_epochs",
  "train.log_every",
  "train.eval_every",
  "train.eval_batch_size",
  "train.max_eval_rows",
  "train.eval_metrics_on",
  "train.steps_per_dispatch",
  "data.prefetch",
  "data.cache_dir",
  "data.input_mode",  # the mode actually used is in the meta, and checked on resume
  "train.compile_cache_dir",
  *compat.OLD_TEST_HOOKS,
)


class IncompatibleCheckpointError(config_lib.ConfigError):
  """The workdir holds a checkpoint of another model or table shape; the message names the key."""


class CheckpointError(RuntimeError):
  """The workdir has checkpoints but none of them can be read, or a checkpoint cannot be written."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's arrays read back differ from the digests recorded when it was saved."""


class StepNotFoundError(config_lib.ConfigError):
  """A checkpoint step asked for by number is not in the workdir; the message lists its steps."""


class CheckpointSaveError(CheckpointError):
  """A checkpoint could not be written; the message names its path and the OS error."""


def flat_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """'key old -> new' for every flat config key that differs, except the resume-free ones and
  keys the saved config lacks that hold their default here (keys added to esmjax after the
  checkpoint was written, whose defaults keep the behaviour it was written with; the compatibility
  keys, whose defaults may not, are compared as `compat.ABSENT_MEANS` reads them)."""
  defaults = flat_config(json.loads(config_lib.default_config().to_json_best_effort()))
  # A compatibility key the saved config lacks means what compat says (its value before the key
  # existed), which may differ from today's default (model.dtype: float32, default auto).
  old = {**{k: v for k, v in compat.ABSENT_MEANS.items() if k not in old}, **old}
  return [
    f"{k} {old.get(k)!r} -> {new.get(k)!r}"
    for k in sorted(set(old) | set(new))
    if old.get(k) != new.get(k)
    and not k.startswith(RESUME_FREE_KEYS)
    and not (k not in old and k in defaults and new.get(k) == defaults[k])
  ]


def read_config(workdir: str) -> dict[str, Any] | None:
  """The config (as JSON) saved with the latest checkpoint of `workdir`, or None if there is none.

  For `esmjax.load(workdir)` of a run that has not finished (no summary.json yet).
  """
  directory = os.path.abspath(os.path.join(workdir, CKPT_DIR))
  if not os.path.isdir(directory):
    return None
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    step = manager.latest_step()
    if step is None:
      return None
    out = manager.restore(
      step, args=ocp.args.Composite(config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    )
    meta, config = out["meta"], out["config"]
    if isinstance(meta, dict) and digest_lib.KEY in meta:  # older checkpoints: no digest to check
      where = os.path.join(directory, str(step))
      fix = "use another checkpoint, or pass config= explicitly"
      meta = digest_lib.verify_json(meta, os.path.join(where, "meta"), fix)
      if digest_lib.json_digest(config) != meta.get("config_digest"):
        raise digest_lib.IntegrityError(
          f"{where}/config changed after esmjax wrote it (its digest differs): {fix}"
        )
    return config
  finally:
    manager.close()


def best_score(config):
  """checkpoint.best_metric as a 'higher is better' score of a metrics dict, or None when unset."""
  metric = compat.get(config, "checkpoint.best_metric")
  if not metric:
    return None
  sign = 1.0 if config.checkpoint.best_mode == "max" else -1.0

  def score(metrics) -> float:  # NaN (an undefined metric) ranks last in either mode
    v = float(metrics.get(metric, math.nan))
    return -math.inf if math.isnan(v) else sign * v

  return score


def preservation(config) -> ocp.checkpoint_managers.PreservationPolicy:
  """Keep the last `keep`; with `best_metric`, also the best checkpoint by that eval metric."""
  keep = ocp.checkpoint_managers.LatestN(n=int(config.checkpoint.keep))
  score = best_score(config)
  if score is None:
    return keep
  best = ocp.checkpoint_managers.BestN(
    get_metric_fn=score, n=1, keep_checkpoints_without_metrics=False
  )
  return ocp.checkpoint_managers.AnyPreservationPolicy([keep, best])
