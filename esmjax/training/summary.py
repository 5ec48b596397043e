"""`summary.json`: what a finished run reports (process 0 writes it), and the shorter record of a
run stopped by a signal (not written: the run is not finished)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from esmjax.core import state as state_lib
from esmjax.core.workdir import SUMMARY_FILE
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
    path = os.path.join(workdir, SUMMARY_FILE)
    with open(path + ".tmp", "w") as f:
      json.dump(summary, f, indent=1, default=str)
    os.replace(path + ".tmp", path)
