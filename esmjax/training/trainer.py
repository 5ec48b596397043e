"""The training loop: its parts (`esmjax.training`) in the order of events.

validate → lock the workdir → datasets → `Run` (mesh, components, shardings, jitted steps) →
the checks against the workdir (checkpoint compatibility, schema) → first write → input mode
(the grain stream, or the rows resident on the devices: `loop.input_mode`) → restore or init →
compile the dispatch program → loop { n steps → the previous log step's line → evaluate → save →
preemption } → final evaluation → final save, on disk → `summary.json`.

A log step's values are read once the next dispatch is queued behind it, so the devices never
wait for the host between dispatches; where the host waits anyway (an evaluation, a save, a stop,
the last step) the line is written at once.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from esmjax.config import defaults as config_lib
from esmjax.core import feed as data_lib
from esmjax.core import workdir as workdir_lib
from esmjax.core.guard import NanGuard
from esmjax.core.run import Run, check_device_count
from esmjax.evaluation import metrics_io
from esmjax.evaluation import scoring as evaluation
from esmjax.evaluation.evaluator import Evaluator
from esmjax.training import input_mode, resident
from esmjax.training import summary as summary_lib
from esmjax.training.checkpointing import CheckpointPolicy, check_resumable, final_checkpoint_intact
from esmjax.training.dispatch import Dispatcher, Plan, boundary_intervals
from esmjax.training.hooks import Hooks
from esmjax.training.preemption import PreemptionHandler
from esmjax.training.train_log import RateMeter, TrainLog

__all__ = ["Run", "train_and_evaluate", "Hooks"]


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, hooks: Hooks | None = None
) -> dict[str, Any]:
  """Trains, evaluates, writes metrics.jsonl and summary.json in `workdir`; returns the summary.

  Resumes from the latest readable checkpoint in `workdir`, which this run owns until it returns
  (a second run on it is refused: `loop.workdir.WorkdirError`). A workdir whose run finished
  (summary.json) is left as it is: with the same config and no more steps asked for, its summary
  is returned with `already_finished` set; another config is refused (`summary.check_finished`).
  On SIGTERM / SIGINT it finishes the dispatch in flight, saves, and returns a summary with
  `preempted` set (no final evaluation, no summary.json). `hooks` are for tests.
  """
  config_lib.validate(config)
  check_device_count(config)  # before any data is generated or read
  # Every check that can refuse the run comes before its first write to the workdir (the owner
  # line, schema.json, metrics, checkpoints): a refused run leaves the workdir as it found it.
  with workdir_lib.claim(workdir, announce=False) as owner:
    train_ds, eval_ds = data_lib.resolve_datasets(config)
    evaluation.check_schema(train_ds.schema, eval_ds)  # else it is scored with other rows' ids
    total = data_lib.num_train_steps(config, train_ds)  # refuses a batch larger than the data
    done = summary_lib.check_finished(workdir, config, total)  # refuses another run's workdir
    run = Run(config, train_ds.schema)
    hooks = hooks or Hooks()
    custom = hooks.batches is not Hooks().batches
    mode = input_mode.resolve(config, run, train_ds, custom_batches=custom)
    if done is not None and final_checkpoint_intact(workdir, config, run, done["steps"], mode):
      logging.warning(
        "%s already finished at step %d (summary.json); nothing to do, nothing changed",
        workdir,
        done["steps"],
      )
      return done
    resumes = check_resumable(workdir, config, run, mode)
    workdir_lib.check_schema(workdir, train_ds.schema, has_model=resumes is not None)
    owner.announce()
    workdir_lib.write_schema(workdir, train_ds.schema)
    with _Training(config, workdir, run, train_ds, eval_ds, total, hooks, mode) as training:
      return training.train()


class _Training:
  """One run's parts, opened together and closed together (also when the run fails)."""

  def __init__(
    self, config, workdir: str, run: Run, train_ds, eval_ds, total: int, hooks: Hooks, mode: str
  ):
    self.config, self.workdir, self.run, self.hooks = config, workdir, run, hooks
    self.input_mode = mode  # 'stream' or 'device' (`loop.input_mode.resolve`)
    self.train_ds, self.eval_ds = train_ds, eval_ds
    self.total = total
    self._stack = contextlib.ExitStack()

  def __enter__(self) -> _Training:
    try:
      self._open()
    except BaseException as e:
      self._stack.__exit__(type(e), e, e.__traceback__)
      raise
    return self

  def _open(self) -> None:
    config, run, stack = self.config, self.run, self._stack
    self.t0 = time.perf_counter()
    self.data_iter = None
    if self.input_mode == "stream":
      self.data_iter = data_lib.make_train_iter(config, self.train_ds)
      stack.callback(data_lib.close_iter, self.data_iter)
    self.writer = metrics_io.MetricWriter(
      self.workdir, enabled=jax.process_index() == 0, config=config
    )
    stack.callback(self.writer.close)
    self.guard = NanGuard(run)
    self.checkpoints = CheckpointPolicy(
      self.workdir, config, run, self.data_iter, self.guard, self.input_mode
    )
    # Closed before the iterator and the writer (it waits for a save in flight, which reads the
    # iterator's position); when the run failed, an error of that save is logged, not raised over
    # the run's own.
    stack.push(lambda exc_type, exc, tb: self.checkpoints.close(failed=exc_type is not None))
    self.meter = RateMeter(config.train.batch_size)
    self.log = TrainLog(config.train.log_every, self.total, self.writer, self.meter, self.guard)
    self.evaluator = Evaluator(
      run, self.eval_ds, self.writer, self.guard, self.meter, config.train.eval_every, self.total
    )
    self.preemption = PreemptionHandler(agree_every=config.train.log_every)
    stack.callback(self.preemption.uninstall)
    self.plan = Plan(config.train.steps_per_dispatch, self.total, boundary_intervals(config))
    if self.input_mode == "device":
      data = resident.ResidentData(self.train_ds, config, run.mesh)
      logging.info(
        "resident rows: %d on %d device(s) (%d each, %.0f MiB in all); %d row(s) left out",
        data.rows,
        run.mesh.size,
        data.m,
        data.nbytes / 2**20,
        data.dropped,
      )
      self.dispatch = resident.ResidentDispatcher(run, data, config.train.steps_per_dispatch)
    else:
      self.dispatch = Dispatcher(run, config.train.steps_per_dispatch)

  def __exit__(self, exc_type, exc, tb) -> None:
    self._stack.__exit__(exc_type, exc, tb)

  def train(self) -> dict[str, Any]:
    state = self.checkpoints.restore()
    state = state if state is not None else self.run.init_fn()
    start = int(jax.device_get(state.step))
    self.writer.resume_at(start)  # records after the checkpoint are produced again: dropped
    if start:
      logging.info("resumed from step %d in %s", start, self.workdir)
    if self.checkpoints.enabled:
      self.preemption.install()  # no checkpoints: the signals keep their usual meaning
    t = time.perf_counter()
    self.dispatch.compile()
    self.guard.compile()
    self.compile_seconds = time.perf_counter() - t
    logging.info(
      "training %s for %d steps (batch %d, %d step(s) per dispatch, %d device(s), "
      "%d process(es), input %s); compiled in %.1fs; train rows %d, eval rows %d",
      self.config.model.name,
      self.total,
      self.config.train.batch_size,
      self.plan.k,
      self.run.mesh.size,
      jax.process_count(),
      self.input_mode,
      self.compile_seconds,
      self.train_ds.num_rows,
      self.eval_ds.num_rows,
    )
    if self.input_mode == "device":
      self.dispatch.start(start)  # the position is the step's: nothing to read from the host
      take = lambda n: n
    else:
      batches = self.hooks.batches(self.data_iter, start)
      take = lambda n: [next(batches) for _ in range(n)]
    self.meter.start()
    step, pending = start, None
    while step < self.total:
      n = self.plan.next_length(step)  # k, or fewer to end exactly on the next log / eval / save
      state, metrics, self.guard.value = self.dispatch(state, take(n), self.guard.value)
      # 1. Log the previous dispatch's last step, now that this one is queued behind it: reading
      #    its values waits for it alone, so the devices never wait for the host's log work.
      pending = self._flush(pending)
      step += n
      self.meter.add_steps(n)
      self.hooks.after_dispatch(step)
      if self.log.should_log(step):
        pending = (step, metrics, n, self.guard.value)
      if self._syncs(step):  # an evaluation, a save, a stop or the end waits for the devices anyway
        pending = self._flush(pending)
      # 2. Evaluate: the whole state is checked first; the time is left out of the run's rate.
      evaluation = self.evaluator.maybe_evaluate(step, state)
      # 3. Save: after the evaluation, whose metrics rank the checkpoint for checkpoint.best_metric;
      #    the state is checked before it is written, so a NaN/Inf state is never saved.
      self.checkpoints.maybe_save(step, self.total, state, evaluation)
      # 4. Preemption: after this step's save, so a signal at a save step costs no second save.
      signal_name = self.preemption.should_stop(step)
      if signal_name:
        self._flush(pending)
        return self._stop(step, state, signal_name)
    self._flush(pending)
    return self._finish(start, step, state)

  def _flush(self, pending) -> None:
    """Writes the log of `pending` (a log step's (step, metrics, n, guard)), if any: its guard is
    read first, so a NaN loss stops the run before its record is written."""
    if pending is not None:
      step, metrics, n, guard = pending
      self.log.maybe_log(step, metrics, n, guard=guard)
    return None

  def _syncs(self, step: int) -> bool:
    """Whether the host waits for the devices after this step's dispatch (no next one to hide the
    log's read behind)."""
    evaluates = self.evaluator.should_evaluate(step)
    return (
      step >= self.total
      or evaluates
      or self.checkpoints.should_save(step, self.total, evaluates)
      or self.preemption.received is not None
    )

  def _stop(self, step: int, state, signal_name: str) -> dict[str, Any]:
    self.checkpoints.save(step, state)  # nothing new when this step was just saved
    self.checkpoints.wait()
    logging.warning(
      "%s received: stopped after step %d/%d and saved checkpoint step %d in %s; run "
      "the same command again to resume",
      signal_name,
      step,
      self.total,
      step,
      self.checkpoints.directory,
    )
    return summary_lib.preempted(
      self.config,
      step=step,
      total=self.total,
      signal_name=signal_name,
      checkpoint_dir=self.checkpoints.directory,
      wall_seconds=time.perf_counter() - self.t0,
    )

  def _finish(self, start: int, step: int, state) -> dict[str, Any]:
    final = self.evaluator.evaluate(step, state)  # checks the whole state first
    self.checkpoints.save_final(step, state, final)  # on disk before anything claims success
    summary = summary_lib.finished(
      self.config,
      step=step,
      start_step=start,
      state=state,
      metrics=final,
      rates=self.meter.summary(),
      compile_seconds=self.compile_seconds,
      eval_seconds=self.evaluator.seconds,
      wall_seconds=time.perf_counter() - self.t0,
      best_step=self.checkpoints.best_step(),
      skipped_checkpoints=self.checkpoints.skipped,
      num_devices=self.run.mesh.size,
      train_dir=self.train_ds.directory,
      eval_dir=self.eval_ds.directory,
    )
    summary_lib.write(self.workdir, summary)
    return summary
