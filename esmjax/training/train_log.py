"""The training log: the run's rate (`RateMeter`) and the log line + train record (`TrainLog`).

What the rate counts: the wall time from the start of the first dispatch to the end of the last,
less the time paused (evaluations); compilation happens before the first dispatch, so it is out.
In: reading and stacking batches, host→device copies, the steps, log lines, metric records, the
NaN guard's reads, the blocking part of checkpoint saves. Out: compilation, evaluations (periodic
and final), restoring, the final save. A log window is the same measure between two log steps.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable

import jax
from absl import logging


class RateMeter:
  """Examples per second of training: of the whole run, and of each log window."""

  def __init__(self, batch_size: int, clock: Callable[[], float] = time.perf_counter):
    self.batch_size = int(batch_size)
    self._clock = clock
    self._active = 0.0  # seconds timed so far, up to the last `window`
    self._since: float | None = None  # when the current active stretch began
    self._steps = 0  # steps timed, up to the last `window`
    self._window_steps = 0  # steps since the last `window`
    self._window_start = 0.0  # self._active at the last `window`
    self.windows: list[float] = []  # each window's rate

  def start(self) -> None:
    self._since = self._clock()

  @contextlib.contextmanager
  def paused(self):
    """Leaves what runs inside out of the rate (the caller has synced the devices first)."""
    if self._since is not None:
      self._active += self._clock() - self._since
      self._since = None
    try:
      yield
    finally:
      self._since = self._clock()

  def add_steps(self, n: int) -> None:
    self._window_steps += int(n)

  def window(self) -> float:
    """Closes a log window (the devices are synced): its rate in examples/s."""
    now = self._clock()
    if self._since is not None:
      self._active += now - self._since
      self._since = now
    seconds = self._active - self._window_start
    rate = self._window_steps * self.batch_size / seconds if seconds > 0 else math.nan
    self._steps += self._window_steps
    self._window_steps, self._window_start = 0, self._active
    self.windows.append(rate)
    return rate

  @property
  def seconds(self) -> float:
    """Training seconds timed up to the last window."""
    return self._active

  @property
  def examples(self) -> int:
    return self._steps * self.batch_size

  def run_rate(self) -> float:
    """Examples over training seconds, up to the last window."""
    return self.examples / self._active if self._active > 0 else math.nan

  def summary(self) -> dict[str, float]:
    finite = [r for r in self.windows if math.isfinite(r)]
    return {
      "examples_per_sec": self.run_rate(),
      "examples_per_sec_peak_window": max(finite) if finite else math.nan,
      "examples_per_sec_median_window": statistics.median(finite) if finite else math.nan,
      "train_seconds": self.seconds,
      "log_windows": len(self.windows),
    }


def format_duration(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  s = int(max(s, 0))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class TrainLog:
  """Every `train.log_every` steps and at the last one: the guard and the step's losses are fetched
  in one read, a log line and a `train` record are written. The trainer calls it once the next
  dispatch is queued, so the read never leaves the devices idle."""

  def __init__(self, every: int, total: int, writer, meter: RateMeter, guard):
    self.every, self.total = int(every), int(total)
    self._writer, self._meter, self._guard = writer, meter, guard

  def should_log(self, step: int) -> bool:
    return step % self.every == 0 or step == self.total

  def maybe_log(self, step: int, metrics, n: int, guard=None) -> None:
    """`metrics`: a dispatch's per-step values, stacked, its n steps first; the line shows the last
    of them (`step`). `guard`: the NaN guard as that dispatch left it (default: the latest). One
    `jax.device_get` reads both."""
    if not self.should_log(step):
      return
    guard, metrics = jax.device_get((self._guard.value if guard is None else guard, metrics))
    self._guard.check(step, value=guard)  # a NaN loss stops the run before its losses are written
    m = {k: float(v[n - 1]) for k, v in metrics.items()}
    rate = self._meter.window()
    eta = (self.total - step) * self._meter.batch_size / self._meter.run_rate()
    logging.info(
      "step %d/%d  loss %.5f  %s  %.0f ex/s  ETA %s",
      step,
      self.total,
      m["loss"],
      " ".join(f"{k[5:]} {v:.4f}" for k, v in m.items() if k.startswith("loss/")),
      rate,
      format_duration(eta),
    )
    self._writer.write(step, "train", {**m, "examples_per_sec": rate})
