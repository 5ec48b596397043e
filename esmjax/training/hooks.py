"""Test-only hooks: how tests reach inside a run (a poisoned batch, a slow step) without
production config keys. `esmjax.training.trainer.train_and_evaluate(..., hooks=Hooks(...))`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator


def _same(batches: Iterator, start_step: int) -> Iterator:
  del start_step
  return batches


def _nothing(step: int) -> None:
  del step


@dataclasses.dataclass(frozen=True)
class Hooks:
  # (training batches, the step the run starts from) -> the batches the steps read, in order. The
  # checkpointed data position stays the wrapped iterator's.
  batches: Callable[[Iterator, int], Iterator] = _same
  # Called with the step count after every dispatch, before that step's log / eval / save.
  after_dispatch: Callable[[int], None] = _nothing
