"""SIGTERM / SIGINT -> save and stop between steps (exit 0, so schedulers requeue cleanly)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import numpy as np
from absl import logging


class PreemptionHandler:
  """A signal sets a flag; `should_stop(step)`, read after each dispatch, reports it.

  A second signal of the same kind acts as usual (kills / raises KeyboardInterrupt), for when a
  save hangs. Handlers are set from the main thread only (Python allows no other). With several
  processes, all must stop at the same step: they agree at log steps (`agree_every`), where every
  dispatch ends, through one all-gather.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, agree_every: int):
    self.agree_every = int(agree_every)
    self.received: str | None = None
    self._previous: dict[int, Any] = {}

  def install(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      logging.warning("not in the main thread: SIGTERM / SIGINT will not save a checkpoint")
      return
    for s in self.SIGNALS:
      prev = signal.signal(s, self._handle)
      self._previous[s] = prev if prev is not None else signal.SIG_DFL

  def _handle(self, signum, frame) -> None:
    del frame
    self.received = signal.Signals(signum).name
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def should_stop(self, step: int) -> str | None:
    """The signal's name once one arrived (agreed by all processes, when several)."""
    if jax.process_count() == 1:
      return self.received
    if step % self.agree_every:
      return None
    from jax.experimental import multihost_utils

    anyone = np.any(multihost_utils.process_allgather(np.asarray([self.received is not None])))
    return (self.received or "SIGTERM (on another process)") if anyone else None

  def uninstall(self) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}
