"""Evaluation during and at the end of training: every `train.eval_every` steps and once at the
end, on the eval dataset, with the state checked first and the time left out of the run's rate."""

from __future__ import annotations

import time
from typing import Any

from absl import logging

from esmjax.core import guard as guard_lib
from esmjax.evaluation import scoring

# The metrics an evaluation's log line shows (all of them go to metrics.jsonl).
LOGGED = (
  "ctr/auc",
  "cvr/auc",
  "ctcvr/auc",
  "ctavr/auc",
  "ctr/gauc",
  "ctcvr/gauc",
  "cvr/entire_space_auc",
  "ctr/logloss",
  "ctcvr/logloss",
  "cvr/calibration",
)


class Evaluator:
  """`should_evaluate(step)` / `maybe_evaluate(step, state)` during training, `evaluate` at the end.

  `seconds` is the time spent evaluating (out of the training rate); `last` the latest metrics.
  """

  def __init__(self, run, dataset, writer, guard, meter, every: int, total: int):
    self._run, self._dataset, self._writer = run, dataset, writer
    self._guard, self._meter = guard, meter
    self.every, self.total = int(every), int(total)
    self.seconds = 0.0
    self.last: dict[str, Any] = {}

  def should_evaluate(self, step: int) -> bool:
    """Periodic evaluations; the last step's is the final one (`evaluate`, after the loop)."""
    return self.every > 0 and step % self.every == 0 and step < self.total

  def maybe_evaluate(self, step: int, state) -> dict[str, Any] | None:
    return self.evaluate(step, state) if self.should_evaluate(step) else None

  def evaluate(self, step: int, state) -> dict[str, Any]:
    self._guard.check(step, state)  # NaN weights would otherwise surface as a metrics error
    with self._meter.paused():  # the check above synced the devices
      t = time.perf_counter()
      metrics = scoring.evaluate_run(self._run, state, self._dataset)
      guard_lib.check_metrics(metrics, step)
      self._writer.write(step, "eval", metrics)
      seconds = time.perf_counter() - t
      self.seconds += seconds
    logging.info(
      "eval at step %d (%.1fs): %s",
      step,
      seconds,
      "  ".join(f"{k} {metrics[k]:.4f}" for k in LOGGED if k in metrics),
    )
    self.last = metrics
    return metrics
