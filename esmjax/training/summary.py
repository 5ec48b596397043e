"""`summary.json`: what a finished run reports (process 0 writes it), and the shorter record of a
run stopped by a signal (not written: the run is not finished)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from esmjax.common import digest
from esmjax.core import state as state_lib
from esmjax.core.workdir import SUMMARY_FILE, read_summary
from esmjax.evaluation import scoring as evaluation


def fingerprint(state) -> str:
  """state.state_fingerprint over the global arrays (gathered first when several processes hold
  them)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    state = multihost_utils.process_allgather(state, tiled=True)
  return state_lib.state_fingerprint(state)


def finished(
  config,
  *,
  step: int,
  start_step: int,
  state,
  metrics: dict[str, Any],
  rates: dict[str, float],
  compile_seconds: float,
  eval_seconds: float,
  wall_seconds: float,
  best_step: int | None,
  skipped_checkpoints: list[str] = (),
  num_devices: int,
  train_dir: str,
  eval_dir: str,
) -> dict[str, Any]:
  """The summary of a finished run. `examples_per_sec` is the whole run's training rate (see
  `esmjax.training.train_log` for what is in and out); the log windows' peak and median beside
  it."""
  return {
    "model": config.model.name,
    "steps": int(step),
    **rates,
    "compile_seconds": compile_seconds,
    "eval_seconds": eval_seconds,
    "wall_seconds": wall_seconds,
    "steps_per_dispatch": int(config.train.steps_per_dispatch),
    "metrics": metrics,
    "collapsed_tasks": evaluation.collapsed_tasks(metrics),  # tasks whose predictions are ~constant
    "state_fingerprint": fingerprint(state),
    "resumed_from_step": start_step or None,
    # Newer checkpoints the resume found unreadable or corrupt and moved to checkpoints.corrupt/:
    # this run went on from an older step than its latest.
    "skipped_checkpoints": list(skipped_checkpoints),
    "best_checkpoint_step": best_step,
    "num_devices": num_devices,
    "num_processes": jax.process_count(),
    "train_dir": train_dir,
    "eval_dir": eval_dir,
    "config": json.loads(config.to_json_best_effort()),
  }


def preempted(
  config, *, step: int, total: int, signal_name: str, checkpoint_dir: str, wall_seconds: float
) -> dict[str, Any]:
  return {
    "model": config.model.name,
    "steps": int(step),
    "total_steps": int(total),
    "preempted": signal_name,
    "checkpoint_dir": checkpoint_dir,
    "wall_seconds": wall_seconds,
  }


def write(workdir: str, summary: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    from esmjax.core import outputs

    # Sealed (`esmjax.common.digest`): `esmjax.load` and predict read the config back from it.
    plain = json.loads(json.dumps(summary, default=str))
    path = os.path.join(workdir, SUMMARY_FILE)
    with outputs.atomic_open(path, "the run summary") as f:
      json.dump(digest.seal(plain), f, indent=1)
      f.write("\n")


def check_finished(workdir: str, config, total: int) -> dict[str, Any] | None:
  """For a run about to start in `workdir`: None when no run finished there, or when the finished
  one is to be trained further (`total` above its steps: the checkpoint's compatibility checks
  then decide, as for any resume). Its summary, marked
  `already_finished`, when it already reached `total` (the caller then checks that its final
  checkpoint is intact, and writes nothing: a rerun of the same command leaves the workdir as it
  was). Raises WorkdirError naming the differing keys when the
  finished run had another config (a seed, a learning rate): its model and summary are that run's.
  """
  from esmjax.checkpoints import checkpoint as ckpt_lib
  from esmjax.core.workdir import WorkdirError

  summary = read_summary(workdir)
  if summary is None or "config" not in summary:
    return None
  if int(summary.get("steps", 0)) < total:  # trained further: the checkpoint checks decide
    return None
  diffs = ckpt_lib.changed_settings(
    ckpt_lib._flat_config(summary["config"]),
    ckpt_lib._flat_config(json.loads(config.to_json_best_effort())),
  )
  if diffs:
    raise WorkdirError(
      f"--workdir={os.path.abspath(workdir)} holds another run, finished at step "
      f"{summary.get('steps')} with another config ({'; '.join(diffs[:4])}"
      f"{'; ...' if len(diffs) > 4 else ''}); use another --workdir"
    )
  return {**summary, "already_finished": True}
