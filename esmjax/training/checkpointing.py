"""The checkpoint policy: what a run resumes from, when it saves, and that nothing unhealthy or
unfinished is claimed (all orbax calls are `esmjax.checkpoints.checkpoint`'s)."""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from esmjax.config import compat


def check_resumable(workdir: str, config, run, input_mode: str = "stream") -> int | None:
  """Before the run writes anything: the checkpoint step it would resume from (None: none), or
  `checkpoint.IncompatibleCheckpointError` when that checkpoint is of another config or layout.
  With checkpoints disabled nothing is resumed, so nothing is checked."""
  from esmjax.checkpoints import checkpoint as ckpt_lib  # orbax is heavy: import when a run starts

  if not config.checkpoint.enabled or not os.path.isdir(os.path.join(workdir, ckpt_lib.CKPT_DIR)):
    return None
  ckpt = ckpt_lib.Checkpointer(workdir, config, run, read_only=True, input_mode=input_mode)
  try:
    return ckpt.check_resumable()
  finally:
    ckpt.manager.close()


class SaveCadence:
  """Spaces periodic saves so that they take at most `share` of the wall time.

  A save costs the time the loop is blocked (the state's digests, the copy off the devices) plus
  its background write, which shares the host with the steps; with tables of millions of rows
  that is seconds per save (a 1.2 GB ESMM state: ~5 s on 2 CPU cores), against ~18 s of steps
  per 1,000 at batch 1,024. So a periodic save comes no sooner than cost / share after the last
  save started, and never while the last one is still writing (it would block on it). Which
  steps are saved then depends on the machine's speed; what a resume from any of them trains does
  not (resumption is exact). share = 0: a save at every `checkpoint.every_steps`.

  `due(step)` is decided once per step (the trainer asks twice), and, with several processes,
  by process 0 for all (a save is collective).
  """

  def __init__(self, share: float, clock=time.perf_counter):
    self.share, self.clock = float(share), clock
    self.started: float | None = None  # the last save's start
    self.blocked = 0.0  # how long it blocked the loop
    self.written: float | None = None  # when its background write was seen finished
    self._decided: tuple[int, bool] | None = None
    self._told = False

  def saving(self, started: float, blocked: float) -> None:
    self.started, self.blocked, self.written = started, blocked, None

  def poll(self, writing: bool) -> None:
    """Notes the end of the background write (called after every dispatch)."""
    if self.started is not None and self.written is None and not writing:
      self.written = self.clock()

  def cost(self) -> float:
    """The last save's time, start to written (to now, while it is still writing)."""
    end = self.written if self.written is not None else self.clock()
    return max(end - self.started, self.blocked)

  def due(self, step: int) -> bool:
    if self._decided is not None and self._decided[0] == step:
      return self._decided[1]
    due = True
    if self.share > 0 and self.started is not None:
      due = self.written is not None and self.clock() - self.started >= self.cost() / self.share
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      due = bool(np.asarray(multihost_utils.process_allgather(np.asarray([due])))[0])
    if not due and not self._told:
      self._told = True
      logging.info(
        "checkpoint: a save took %.1fs (%.1fs blocked); periodic saves come at least %.0fs "
        "apart so that they take at most %.0f%% of the time (checkpoint.max_time_share; 0 "
        "saves at every checkpoint.every_steps)",
        self.cost(),
        self.blocked,
        self.cost() / self.share,
        100 * self.share,
      )
    self._decided = (step, due)
    return due


class CheckpointPolicy:
  """Saves every `checkpoint.every_steps` (spaced by `checkpoint.max_time_share`: `SaveCadence`),
  after an evaluation when `checkpoint.best_metric` ranks checkpoints, on preemption and at the
  end; never a state the guard finds non-finite.

  Disabled (`checkpoint.enabled=False`): restores nothing, saves nothing. The guard's error
  messages name the checkpoint a rerun would resume from (`describe_last`).
  """

  def __init__(self, workdir: str, config, run, data_iter, guard, input_mode: str = "stream"):
    self.enabled = bool(config.checkpoint.enabled)
    self.every = int(config.checkpoint.every_steps)
    self.ranks_evaluations = bool(config.checkpoint.best_metric)
    self._data_iter, self._guard = data_iter, guard
    self._ckpt = None
    if self.enabled:
      from esmjax.checkpoints import (
        checkpoint as ckpt_lib,  # orbax is heavy: import when a run starts
      )

      self._ckpt = ckpt_lib.Checkpointer(workdir, config, run, input_mode=input_mode)
    guard.last_checkpoint = self.describe_last
    self.cadence = SaveCadence(float(compat.get(config, "checkpoint.max_time_share")))

  @property
  def directory(self) -> str | None:
    return self._ckpt.directory if self._ckpt is not None else None

  def restore(self):
    """The latest readable checkpoint's state (the data iterator moved to its position), or None."""
    return self._ckpt.restore_latest(self._data_iter) if self._ckpt is not None else None

  def should_save(self, step: int, total: int, evaluated: bool) -> bool:
    """Periodic saves, and one after each evaluation when evaluations rank checkpoints; the last
    step's save comes with the final evaluation (`save_final`)."""
    if not self.enabled or step >= total:
      return False
    self.cadence.poll(self._ckpt.writing())
    if evaluated and self.ranks_evaluations:
      return True
    return step % self.every == 0 and self.cadence.due(step)

  def maybe_save(self, step: int, total: int, state, evaluation: dict[str, Any] | None) -> None:
    if self.should_save(step, total, evaluation is not None):
      self.save(step, state, evaluation)

  def save(self, step: int, state, metrics: dict[str, Any] | None = None) -> None:
    """Starts an async save at `step` (none if that step is saved already). A failed save raises
    (`checkpoint.CheckpointError`) and the run stops there."""
    if self._ckpt is None:
      return
    self._guard.check(step, state)  # a NaN/Inf state is never written
    started = self.cadence.clock()
    if self._ckpt.save(step, state, self._data_iter, metrics=metrics):
      self.cadence.saving(started, self.cadence.clock() - started)

  def save_final(self, step: int, state, metrics: dict[str, Any]) -> None:
    """Saves the last step and waits until it is on disk: the run claims success only after that."""
    self.save(step, state, metrics)
    self.wait()

  def wait(self) -> None:
    if self._ckpt is not None:
      self._ckpt.wait()

  def latest_step(self) -> int | None:
    return self._ckpt.latest_step() if self._ckpt is not None else None

  @property
  def skipped(self) -> list[str]:
    """The checkpoints the resume passed over as unreadable or corrupt ("step N (why)")."""
    return list(self._ckpt.skipped) if self._ckpt is not None else []

  def best_step(self) -> int | None:
    return self._ckpt.best_step() if self._ckpt is not None else None

  def describe_last(self) -> str:
    last = self.latest_step()
    return (
      f"the last checkpoint is step {last} in {self.directory}"
      if last is not None
      else "no checkpoint was written"
    )

  def close(self, failed: bool) -> None:
    """Waits for a save in flight, so what was written is complete. When the run already failed,
    an error of that save is logged, not raised over the run's own."""
    if self._ckpt is None:
      return
    if not failed:
      self._ckpt.close()
      return
    try:
      self._ckpt.close()
    except Exception as e:  # pylint: disable=broad-except
      first_line = str(e).splitlines()[0] if str(e) else ""
      logging.warning("while stopping: %s: %s", type(e).__name__, first_line)


def final_checkpoint_intact(
  workdir: str, config, run, step: int, input_mode: str = "stream"
) -> bool:
  """Whether the checkpoint of a finished run's last `step` reads back whole (digests verified).

  When it does not (truncated, bytes changed, deleted), rerunning the run's command trains again
  from the last readable checkpoint, as a resume does, and the new summary names what it skipped.
  A run without checkpoints has nothing to check.
  """
  if not config.checkpoint.enabled:
    return True
  from esmjax.checkpoints import checkpoint as ckpt_lib

  ck = ckpt_lib.Checkpointer(workdir, config, run, read_only=True, input_mode=input_mode)
  try:
    ck.restore_step(step)
    return True
  except (ckpt_lib.CheckpointError, ckpt_lib.StepNotFoundError, FileNotFoundError) as e:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    logging.warning(
      "%s finished at step %d, but its final checkpoint cannot be used (%s): training again "
      "from the last readable checkpoint",
      workdir,
      step,
      first,
    )
    return False
  finally:
    ck.close()
