"""All orbax calls live here: one Composite of train state + grain iterator state + config + meta.

A checkpoint step directory holds four items:

- `state`: the whole TrainState (step, tower params and optimizer state, tables, table slots, the
  merge scratch map, rng), saved with StandardSave;
- `data`: the grain iterator position (`process_{i}-of-{n}.json`), snapshotted when `save` is
  called;
- `config`: the resolved config as JSON;
- `meta`: what restoring needs before touching the arrays: every leaf's shape and dtype, the table
  row counts, the device and process counts it was written on; and every leaf's digest
  (`esmjax.checkpoints.digest`), computed on the devices when the state was saved.

Restores go through abstract targets that carry the *current* run's shardings, so a checkpoint
written on N devices resumes on M. Tables are padded to a multiple of the device count, so their
row count can differ between N and M: such leaves are restored at the saved shape and re-padded
(the padding rows are never addressed by any id).

Before any array is read, the saved config and shapes are compared with this run's, so a workdir of
another model is refused with a message that names the differing key or leaf. After the arrays
are read, their digests are compared with the recorded ones. A latest checkpoint that cannot be
read (truncated, partially deleted) or whose arrays differ from their digests (bytes changed on
disk) is moved aside to `checkpoints.corrupt/` with a warning naming it, and the previous one is
used.

Saves run in the background. A save that fails (disk full, no permission, read-only or size-limited
file system) raises `CheckpointSaveError` at the next `save`, `wait` or `close`, one line naming
the step's path and the OS error; orbax's own error logs of that save are dropped, since that line
says all they do.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from esmjax.checkpoints import digest as digest_lib
from esmjax.checkpoints import orbax_errors
from esmjax.config import compat
from esmjax.config import defaults as config_lib

CKPT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints.corrupt"
META_FORMAT = 1
ROW_LEAVES = ("tables", "slots", "scratch")  # leaves whose axis 0 is the (padded) table row
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
  "train.steps_per_dispatch",
  "data.prefetch",
  "data.cache_dir",
  *compat.OLD_TEST_HOOKS,
)


class IncompatibleCheckpointError(config_lib.ConfigError):
  """The workdir holds a checkpoint of another model or table shape; the message names the key."""


class CheckpointError(RuntimeError):
  """The workdir has checkpoints but none of them can be read, or a checkpoint cannot be written."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's arrays read back differ from the digests recorded when it was saved."""


class CheckpointSaveError(CheckpointError):
  """A checkpoint could not be written; the message names its path and the OS error."""


class _FrozenIterState(grain.DatasetIterator):
  """The data iterator's position at `save` time.

  grain's handler calls `get_state()` when orbax runs it; a snapshot makes the saved position the
  one that matches the saved state, whichever thread orbax saves from and however far the live
  iterator (or its prefetch thread) has moved on since.
  """

  def __init__(self, state: dict[str, Any]):
    super().__init__()
    self._state = state

  def __next__(self):
    raise StopIteration

  def get_state(self):
    return self._state

  def set_state(self, state):
    self._state = state


def _flat_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def _leaves(tree) -> dict[str, Any]:
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _is_row_leaf(path: str, shape, padded_rows: int) -> bool:
  top = path[1:].split("[")[0].split(".")[0]  # keystr: ".tables['shared']" -> "tables"
  return top in ROW_LEAVES and len(shape) >= 1 and shape[0] == padded_rows


def _best_score(config):
  """checkpoint.best_metric as a 'higher is better' score of a metrics dict, or None when unset."""
  metric = compat.get(config, "checkpoint.best_metric")
  if not metric:
    return None
  sign = 1.0 if config.checkpoint.best_mode == "max" else -1.0

  def score(metrics) -> float:  # NaN (an undefined metric) ranks last in either mode
    v = float(metrics.get(metric, math.nan))
    return -math.inf if math.isnan(v) else sign * v

  return score


def _preservation(config) -> ocp.checkpoint_managers.PreservationPolicy:
  """Keep the last `keep`; with `best_metric`, also the best checkpoint by that eval metric."""
  keep = ocp.checkpoint_managers.LatestN(n=int(config.checkpoint.keep))
  score = _best_score(config)
  if score is None:
    return keep
  best = ocp.checkpoint_managers.BestN(
    get_metric_fn=score, n=1, keep_checkpoints_without_metrics=False
  )
  return ocp.checkpoint_managers.AnyPreservationPolicy([keep, best])


_CPU_HANDLER_SET = False


def _cpu_array_handler() -> None:
  """On CPU, saves replicated arrays from one replica.

  orbax's default splits a replicated array over its replicas and compiles one slicing program per
  shape and device on the first save (4 s with 8 CPU devices); CPU devices share the host's memory,
  so the split buys nothing there. Accelerators keep orbax's default.
  """
  global _CPU_HANDLER_SET
  if jax.default_backend() != "cpu" or _CPU_HANDLER_SET:
    return
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # orbax warns about the (intended) override
  try:
    ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
    )
  finally:
    logging.set_verbosity(verbosity)
  _CPU_HANDLER_SET = True


class Checkpointer:
  """Saves the train state, data position and config; restores the latest usable checkpoint."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, run, read_only=False):
    """`read_only`: for `check_resumable` before the run owns the workdir's contents (creates,
    cleans and saves nothing)."""
    _cpu_array_handler()
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CKPT_DIR)
    self.config = config
    self.run = run
    self.restored_step: int | None = None
    self._in_flight: int | None = None  # the step whose background save has not been waited for
    orbax_errors.drop_write_error_logs()
    orbax_errors.drop_closed_loop_errors()
    # best_fn only makes orbax write each checkpoint's metrics (so the best survives a restart);
    # which steps are kept is the preservation policy's call.
    opts = ocp.CheckpointManagerOptions(
      preservation_policy=_preservation(config),
      best_fn=_best_score(config),
      best_mode="max",
      create=not read_only,
      enable_async_checkpointing=not read_only,
      cleanup_tmp_directories=not read_only,
      read_only=read_only,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=opts)

  # -- saving -------------------------------------------------------------------------------------

  def _layout(self):
    return self.run.components.layout

  def _meta(self, step: int, has_data: bool, digests: dict[str, str]) -> dict[str, Any]:
    layout = self._layout()
    return {
      "format": META_FORMAT,
      "step": int(step),
      "has_data": has_data,
      "num_devices": int(self.run.mesh.size),
      "num_processes": int(jax.process_count()),
      "num_rows": int(layout.num_rows),
      "padded_rows": int(layout.padded_rows),
      "leaves": {
        p: {"shape": list(x.shape), "dtype": str(x.dtype)}
        for p, x in _leaves(self.run.state_shape).items()
      },
      "digest": digest_lib.METHOD,
      "digests": digests,
    }

  def has_step(self, step: int) -> bool:
    return step in self.manager.all_steps()

  def save(self, step: int, state, data_iter, metrics: dict[str, Any] | None = None) -> bool:
    """Starts an async save of `state` at `step` (False if that step is already saved).

    Returns once the arrays are copied off the (donated) device buffers and their digests are
    computed; the files are written in the background. `metrics` (the eval at this step) rank the
    checkpoint for `best_metric`. Raises CheckpointSaveError if the previous save failed (naming
    its step) or this one cannot start.
    """
    t = time.time()
    self.wait()  # an earlier save that failed raises here, naming its step
    if self.has_step(step):
      return False
    has_data = isinstance(data_iter, grain.DatasetIterator)
    args = {
      "state": ocp.args.StandardSave(state),
      "config": ocp.args.JsonSave(json.loads(self.config.to_json_best_effort())),
      "meta": ocp.args.JsonSave(self._meta(step, has_data, digest_lib.digests(state))),
    }
    if has_data:
      args["data"] = grain.checkpoint.CheckpointSave(_FrozenIterState(data_iter.get_state()))
    plain = None
    if _best_score(self.config) is not None:  # {}: not evaluated at this step (ranks last)
      plain = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**args), metrics=plain, force=True)
    except Exception as e:  # pylint: disable=broad-except  (what runs before the background part)
      raise self._save_error(step, e) from e
    self._in_flight = step if saved else None
    logging.info(
      "checkpoint step %d: saving in the background to %s (blocked %.2fs)",
      step,
      self.directory,
      time.time() - t,
    )
    return saved

  # -- restoring ----------------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the best `checkpoint.best_metric` (None when unset or never evaluated)."""
    score = _best_score(self.config)
    if score is None:
      return None
    scored = [(score(m), s) for s in self.manager.all_steps() if (m := self.manager.metrics(s))]
    return max(scored)[1] if scored else None

  def restore_latest(self, data_iter=None):
    """The newest readable checkpoint's state (current shardings) and data position, or None.

    An unreadable checkpoint, or one whose arrays differ from their recorded digests, is moved to
    `checkpoints.corrupt/` with a warning and the one before it is tried; an incompatible one
    raises IncompatibleCheckpointError (nothing is moved).
    """
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved_config, meta = self._read_small_items(step)
      except Exception as e:  # pylint: disable=broad-except
        failed.append(self._quarantine(step, e))
        continue
      self._check_compatible(step, saved_config, meta)
      try:
        state = self._restore_arrays(step, meta, data_iter)
      except Exception as e:  # pylint: disable=broad-except
        failed.append(self._quarantine(step, e))
        continue
      if failed:
        logging.warning("resuming from the previous checkpoint, step %d, instead", step)
      self.restored_step = step
      logging.info("restored checkpoint step %d from %s", step, self.directory)
      return state
    if failed:
      raise CheckpointError(
        f"no readable checkpoint in {self.directory}: "
        + "; ".join(failed)
        + f". The unreadable ones were moved to {os.path.join(self.workdir, CORRUPT_DIR)}; "
        "rerun to start from scratch, or restore them by hand"
      )
    return None

  def check_resumable(self) -> int | None:
    """The step a restore would start from, refused (IncompatibleCheckpointError) when it is of
    another config or layout; None when there is no readable one. Reads only the small items, and
    moves nothing: steps whose small items cannot be read are skipped (the restore quarantines
    them)."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved_config, meta = self._read_small_items(step)
      except Exception:  # pylint: disable=broad-except
        continue
      self._check_compatible(step, saved_config, meta, warn=False)
      return step
    return None

  def _read_small_items(self, step: int):
    out = self.manager.restore(
      step, args=ocp.args.Composite(config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    )
    meta = out["meta"]
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT or "leaves" not in meta:
      raise ValueError(f"meta item is not an esmjax checkpoint description: {str(meta)[:80]}")
    return out["config"], meta

  def _check_compatible(
    self, step: int, saved_config: dict[str, Any], meta: dict[str, Any], warn: bool = True
  ) -> None:
    where = f"{self.directory} holds checkpoint step {step}"
    fix = "use another --workdir, or the config that wrote it"
    old, new = (
      _flat_config(saved_config),
      _flat_config(json.loads(self.config.to_json_best_effort())),
    )
    diffs = [
      f"{k}={old.get(k)!r} (checkpoint) vs {new.get(k)!r} (this config)"
      for k in IDENTITY_KEYS
      if old.get(k) != new.get(k)
    ]
    if diffs:
      raise IncompatibleCheckpointError(
        f"{where} of an incompatible config: {'; '.join(diffs)}; {fix}"
      )
    if meta["num_processes"] != jax.process_count():
      raise IncompatibleCheckpointError(
        f"{where} written by {meta['num_processes']} process(es); the data iterator position is "
        f"saved per process, so resume with distributed.num_processes={meta['num_processes']}"
      )
    layout = self._layout()
    if meta["num_rows"] != layout.num_rows:
      raise IncompatibleCheckpointError(
        f"{where} with {meta['num_rows']} embedding rows, but this dataset's schema needs "
        f"{layout.num_rows} (data.train_dir has other vocabularies); {fix}"
      )
    saved, current = meta["leaves"], _leaves(self.run.state_shape)
    for path in sorted(set(saved) | set(current)):
      if path not in current or path not in saved:
        side = "checkpoint" if path not in current else "this config"
        raise IncompatibleCheckpointError(
          f"{where} of another state layout: state{path} exists only in the {side}; {fix}"
        )
      s, c = saved[path], current[path]
      same_rest = tuple(s["shape"][1:]) == tuple(c.shape[1:])
      resizable = (
        _is_row_leaf(path, s["shape"], meta["padded_rows"])
        and _is_row_leaf(path, c.shape, layout.padded_rows)
        and same_rest
      )
      if s["dtype"] != str(c.dtype) or (tuple(s["shape"]) != tuple(c.shape) and not resizable):
        raise IncompatibleCheckpointError(
          f"{where} of an incompatible config: state{path} is "
          f"{s['dtype']}{tuple(s['shape'])} there and {c.dtype}{tuple(c.shape)} here; {fix}"
        )
    changed = [
      f"{k} {old.get(k)!r} -> {new.get(k)!r}"
      for k in sorted(set(old) | set(new))
      if old.get(k) != new.get(k) and not k.startswith(RESUME_FREE_KEYS)
    ]
    if changed and warn:
      logging.warning(
        "resuming step %d with changed settings (the run will differ from an "
        "uninterrupted one): %s",
        step,
        ", ".join(changed),
      )

  def _restore_arrays(self, step: int, meta: dict[str, Any], data_iter):
    mesh = self.run.mesh
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    saved = meta["leaves"]
    resize = {}

    def target(path, shape, sharding):
      p = jax.tree_util.keystr(path)
      rows = saved[p]["shape"]
      if tuple(rows) == tuple(shape.shape):
        return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding)
      resize[p] = sharding
      # Rows padded for another device count: read as saved (row-sharded where they still divide).
      spec = sharding if rows[0] % mesh.size == 0 else rep
      return jax.ShapeDtypeStruct(tuple(rows), shape.dtype, sharding=spec)

    abstract = jax.tree_util.tree_map_with_path(
      target, self.run.state_shape, self.run.state_sharding
    )
    args = {"state": ocp.args.StandardRestore(abstract)}
    if isinstance(data_iter, grain.DatasetIterator):
      if not meta.get("has_data", True):
        raise ValueError("this checkpoint has no data iterator position to resume from")
      args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    state = self.manager.restore(step, args=ocp.args.Composite(**args))["state"]
    self._verify(step, meta, state)
    if resize:
      rows = self._layout().padded_rows
      logging.info(
        "re-padding %d table leaves from %d rows (%d devices) to %d rows (%d devices)",
        len(resize),
        meta["padded_rows"],
        meta["num_devices"],
        rows,
        mesh.size,
      )
      state = _repad(state, resize, rows)
    return state

  def _verify(self, step: int, meta: dict[str, Any], state) -> None:
    """Raises CorruptCheckpointError naming the leaves whose digests differ from the recorded."""
    if meta.get("digest") != digest_lib.METHOD or "digests" not in meta:
      logging.warning(
        "checkpoint step %d in %s records no state digest (%s): restored unverified",
        step,
        self.directory,
        digest_lib.METHOD,
      )
      return
    recorded, now = meta["digests"], digest_lib.digests(state)
    bad = sorted(p for p in set(recorded) | set(now) if recorded.get(p) != now.get(p))
    if bad:
      raise CorruptCheckpointError(
        f"{len(bad)} of {len(now)} state arrays differ from the digests recorded at save: "
        + ", ".join("state" + p for p in bad[:3])
        + (", ..." if len(bad) > 3 else "")
      )

  def _quarantine(self, step: int, error: Exception) -> str:
    """Moves an unreadable step aside (kept for inspection) so a later save can reuse its number."""
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.workdir, CORRUPT_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    reason = (
      str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    )
    if jax.process_index() == 0 and os.path.isdir(src):
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.move(src, dst)
    if jax.process_count() > 1:  # everyone sees the move before listing the steps again
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"esmjax-quarantine-{step}")
    self.manager.reload()
    verdict = "is corrupt" if isinstance(error, CorruptCheckpointError) else "is unreadable"
    logging.warning(
      "checkpoint step %d in %s %s (%s: %s); moved it to %s",
      step,
      self.directory,
      verdict,
      type(error).__name__,
      reason,
      dst,
    )
    return f"step {step} ({type(error).__name__}: {reason})"

  def wait(self) -> None:
    """Blocks until the save in flight is written; raises CheckpointSaveError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      step, self._in_flight = self._in_flight, None
      raise self._save_error(step, e) from e
    self._in_flight = None

  def close(self) -> None:
    """Waits for the save in flight (raising CheckpointSaveError if it failed), then closes."""
    try:
      self.wait()
    finally:
      self.manager.close()

  def _save_error(self, step: int | None, error: BaseException) -> CheckpointSaveError:
    where = os.path.join(self.directory, str(step)) if step is not None else self.directory
    return CheckpointSaveError(
      f"checkpoint step {step} could not be saved to {where}: {orbax_errors.describe(error)}"
    )


def _repad(state, resize: dict[str, Any], rows: int):
  """Cuts or pads axis 0 of the `resize` leaves to `rows` (scratch pads with -1, its idle value)."""

  def fix(path, x):
    p = jax.tree_util.keystr(path)
    if p not in resize:
      return x
    fill = -1 if p.startswith(".scratch") else 0

    def body(a):
      if a.shape[0] >= rows:
        return a[:rows]
      pad = jnp.full((rows - a.shape[0],) + a.shape[1:], fill, a.dtype)
      return jnp.concatenate([a, pad])

    return jax.jit(body, out_shardings=resize[p])(x)

  return jax.tree_util.tree_map_with_path(fix, state)


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
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  finally:
    manager.close()
