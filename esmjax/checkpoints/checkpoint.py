"""All orbax calls live here: one Composite of train state + grain iterator state + config + meta.

A checkpoint step directory holds four items:

- `state`: the whole TrainState (step, tower params and optimizer state, tables, table slots, the
  merge scratch map, rng), saved with StandardSave;
- `data`: the grain iterator position (`process_{i}-of-{n}.json`), snapshotted when `save` is
  called;
- `config`: the resolved config as JSON;
- `meta`: what restoring needs before touching the arrays: every leaf's shape and dtype, the table
  row counts, the device and process counts it was written on; every leaf's digest
  (`esmjax.common.digest`), computed on the devices when the state was saved; the digests of the
  `config` item and of every process's data iterator position. `meta` itself is sealed with its
  own digest (`digest.seal`), so none of these can change unnoticed.

Restores go through abstract targets that carry the *current* run's shardings, so a checkpoint
written on N devices resumes on M. Tables are padded to a multiple of the device count, so their
row count can differ between N and M: such leaves are restored at the saved shape and re-padded
(the padding rows are never addressed by any id).

Before any array is read, the saved config and shapes are compared with this run's, so a workdir of
another model is refused with a message that names the differing key or leaf. After the arrays
are read, their digests are compared with the recorded ones, and so is the restored data
iterator position. When training resumes (`restore_latest`), a latest checkpoint that cannot be
read (truncated, partially deleted) or whose meta, config, arrays or data position differ from
their digests (bytes changed on disk) is moved aside to `checkpoints.corrupt/` with a warning
naming it, and the previous one is used; `skipped` lists the steps passed over, for the run's
summary. Serving and evaluation (`restore_step`) read the one checkpoint asked for (the latest by
default) or stop with a `CheckpointError` naming it: their results would otherwise be an older
model's under the latest one's name. A checkpoint written before these digests is restored with
a warning (its state arrays are still verified when it records their digests): refusing it would
throw away the training it holds.

Saves run in the background. A save that fails (disk full, no permission, read-only or size-limited
file system) raises `CheckpointSaveError` at the next `save`, `wait` or `close`, one line naming
the step's path and the OS error; orbax's own error logs of that save are dropped, since that line
says all they do.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from esmjax.checkpoints import orbax_errors
from esmjax.checkpoints.rows import ROW_LEAVES  # noqa: F401  (public here)
from esmjax.checkpoints.rows import is_row_leaf as _is_row_leaf
from esmjax.checkpoints.rows import leaves as _leaves
from esmjax.checkpoints.rows import repad as _repad
from esmjax.checkpoints.settings import (  # noqa: F401  (public here: the checkpoint's API)
  CKPT_DIR,
  CORRUPT_DIR,
  IDENTITY_KEYS,
  RESUME_FREE_KEYS,
  CheckpointError,
  CheckpointSaveError,
  CorruptCheckpointError,
  IncompatibleCheckpointError,
  StepNotFoundError,
  changed_settings,
  read_config,
)
from esmjax.checkpoints.settings import best_score as _best_score
from esmjax.checkpoints.settings import flat_config as _flat_config
from esmjax.checkpoints.settings import preservation as _preservation
from esmjax.common import digest as digest_lib

META_FORMAT = 1


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

  def __init__(
    self,
    workdir: str,
    config: ml_collections.ConfigDict,
    run,
    read_only=False,
    input_mode: str = "stream",
  ):
    """`read_only`: for `check_resumable` before the run owns the workdir's contents (creates,
    cleans and saves nothing). `input_mode`: 'stream' or 'device', how the saved position is
    read."""
    _cpu_array_handler()
    self.input_mode = input_mode  # 'stream' or 'device': how the saved position is read
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CKPT_DIR)
    self.config = config
    self.run = run
    self.restored_step: int | None = None
    self.skipped: list[str] = []  # "step N (why)" of each checkpoint the resume passed over
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
      "input_mode": self.input_mode,
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

  def _sealed_meta(self, step, has_data, state, config_json, data_state) -> dict[str, Any]:
    meta = self._meta(step, has_data, digest_lib.digests(state))
    meta["config_digest"] = digest_lib.json_digest(config_json)
    if has_data:
      meta["data_digests"] = _per_process(digest_lib.json_digest(data_state))
    return digest_lib.seal(meta)

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
    config_json = json.loads(self.config.to_json_best_effort())
    data_state = data_iter.get_state() if has_data else None
    args = {
      "state": ocp.args.StandardSave(state),
      "config": ocp.args.JsonSave(config_json),
      "meta": ocp.args.JsonSave(self._sealed_meta(step, has_data, state, config_json, data_state)),
    }
    if has_data:
      args["data"] = grain.checkpoint.CheckpointSave(_FrozenIterState(data_state))
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
      self.restored_step, self.skipped = step, failed
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

  def restore_step(self, step: int | None = None):
    """Checkpoint `step` (default: the latest) for serving and evaluation: never another step,
    nothing moved. Raises FileNotFoundError (no checkpoint), StepNotFoundError (no such step),
    CheckpointError (one line: the step, why, what to do) when it is unreadable or corrupt."""
    steps = sorted(self.manager.all_steps())
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    latest = step is None
    step = steps[-1] if latest else int(step)
    if step not in steps:
      raise StepNotFoundError(
        f"checkpoint step {step} is not in {self.directory}; its steps are "
        f"{', '.join(map(str, steps))}"
      )
    try:
      saved_config, meta = self._read_small_items(step)
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, latest, steps, e) from None
    self._check_compatible(step, saved_config, meta)
    try:
      state = self._restore_arrays(step, meta, None)
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, latest, steps, e) from None
    self.restored_step = step
    logging.info("restored checkpoint step %d from %s", step, self.directory)
    return state

  def _unreadable(self, step: int, latest: bool, steps: list[int], error: Exception):
    orbax_errors.contain_aborted_reads()
    reason = _first_line(error)
    verdict = "is corrupt" if isinstance(error, CorruptCheckpointError) else "is unreadable"
    which = "the latest" if latest else "the one asked for"
    older = [s for s in steps if s < step]
    hint = (
      f"; or name an older one explicitly (--checkpoint_step={older[-1]}, "
      f"esmjax.load(workdir, step={older[-1]}))"
      if older
      else ""
    )
    return CheckpointError(
      f"checkpoint step {step} in {self.directory} ({which}) {verdict} "
      f"({type(error).__name__}: {reason}); no older checkpoint is used in its place: rerun "
      f"training in this workdir to resume from the last readable one{hint}"
    )

  def _read_small_items(self, step: int):
    out = self.manager.restore(
      step, args=ocp.args.Composite(config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    )
    meta = out["meta"]
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT or "leaves" not in meta:
      raise ValueError(f"meta item is not an esmjax checkpoint description: {str(meta)[:80]}")
    return out["config"], self._verified_meta(step, meta, out["config"])

  def _verified_meta(self, step: int, meta: dict[str, Any], config_json) -> dict[str, Any]:
    """meta without its seal, after checking it and the config item against their digests."""
    where = os.path.join(self.directory, str(step))
    if digest_lib.KEY not in meta:
      logging.warning(
        "checkpoint step %d in %s records no digest of its meta, config and data position "
        "(written by an older esmjax): restored without checking them",
        step,
        self.directory,
      )
      return meta
    try:
      meta = digest_lib.verify_json(meta, f"{where}/meta", "")
    except digest_lib.IntegrityError:
      raise CorruptCheckpointError("its meta item differs from its digest") from None
    if digest_lib.json_digest(config_json) != meta.get("config_digest"):
      raise CorruptCheckpointError("its config item differs from the digest recorded at save")
    return meta

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
    saved_mode = meta.get("input_mode", "stream")  # checkpoints from before the key: the stream
    if saved_mode != self.input_mode:
      raise IncompatibleCheckpointError(
        f"{where} trained with data.input_mode={saved_mode!r}, whose data position this run "
        f"({self.input_mode!r}) cannot continue; resume with --config.data.input_mode={saved_mode}"
      )
    if self.input_mode == "device" and meta["num_devices"] != self.run.mesh.size:
      logging.warning(
        "checkpoint step %d was trained on %d device(s), this run has %d: the resident rows are "
        "split over the devices differently, so the data order from here on differs from an "
        "uninterrupted run's",
        step,
        meta["num_devices"],
        self.run.mesh.size,
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
    changed = changed_settings(old, new)
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
    if "data" in args and "data_digests" in meta:
      self._verify_position(meta, data_iter)
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

  def _verify_position(self, meta: dict[str, Any], data_iter) -> None:
    """Raises CorruptCheckpointError when this process's restored data iterator position differs
    from the one recorded at save (a resume from another position trains on other rows)."""
    recorded = meta["data_digests"]
    i = jax.process_index()
    now = digest_lib.json_digest(data_iter.get_state())
    if len(recorded) != jax.process_count() or recorded[i] != now:
      raise CorruptCheckpointError(
        f"the data iterator position of process {i} differs from the digest recorded at save"
      )

  def _quarantine(self, step: int, error: Exception) -> str:
    """Moves an unreadable step aside (kept for inspection) so a later save can reuse its number."""
    orbax_errors.contain_aborted_reads()  # its aborted reads' coroutines: counted, not printed
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.workdir, CORRUPT_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    reason = _first_line(error)
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

  def writing(self) -> bool:
    """Whether a save's background write is still running (a failed one reports at `wait`)."""
    return self._in_flight is not None and self.manager.is_saving_in_progress()

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


def _per_process(value: str) -> list[str]:
  """[value of process 0, ..., of process n-1] on every process (meta is written by process 0)."""
  if jax.process_count() == 1:
    return [value]
  import numpy as np
  from jax.experimental import multihost_utils

  raw = np.frombuffer(value.encode().ljust(80), np.uint8)
  got = np.asarray(multihost_utils.process_allgather(raw)).reshape(jax.process_count(), -1)
  return [bytes(row).decode().rstrip() for row in got]


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__
