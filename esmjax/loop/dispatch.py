"""Several training steps per host dispatch (`train.steps_per_dispatch` = k).

A dispatch of k steps is one compiled program: a `lax.scan` of the guarded train step over k
batches stacked on a leading axis, so the per-step host cost (Python, the transfer calls, the
dispatch itself) is paid once per k steps. Logging, the NaN guard, evaluations and checkpoints
stay exact at step granularity because a dispatch never crosses a log / eval / checkpoint / final
step: where k steps would, the plan runs single steps up to it. Two programs at most are compiled
(k and 1), both before the loop starts. Each step is the same computation in either program, and
the per-step metrics come back stacked [n], so runs with any k log the same losses and end in the
same state (tests/test_dispatch.py checks both bit for bit).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from esmjax import sharding as sh
from esmjax import steps
from esmjax.loop import guard as guard_lib


def boundary_intervals(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The step intervals a dispatch must not cross: log lines, evaluations and checkpoints."""
  every = [int(config.train.log_every)]
  if config.train.eval_every > 0:
    every.append(int(config.train.eval_every))
  if config.checkpoint.enabled:
    every.append(int(config.checkpoint.every_steps))
  return tuple(every)


class Plan:
  """How many steps each dispatch runs: k, or 1 where k steps would cross the next boundary
  (a multiple of one of `every`, or `total`)."""

  def __init__(self, k: int, total: int, every: Sequence[int]):
    self.k, self.total, self.every = int(k), int(total), tuple(int(e) for e in every if e > 0)

  def next_boundary(self, step: int) -> int:
    return min([self.total] + [(step // e + 1) * e for e in self.every])

  def next_length(self, step: int) -> int:
    return self.k if step + self.k <= self.next_boundary(step) else 1

  def lengths(self, start: int) -> tuple[int, ...]:
    """The distinct dispatch lengths a run from `start` to `total` uses (what to compile)."""
    if self.k == 1:
      return (1,)
    seen, step = set(), start
    for _ in range(100_000):  # boundaries are periodic: past that many, assume both lengths
      if step >= self.total or len(seen) == 2:
        return tuple(sorted(seen))
      boundary = self.next_boundary(step)
      gap = boundary - step  # dispatches of k while they fit, then single steps up to the boundary
      if gap >= self.k:
        seen.add(self.k)
      if gap % self.k:
        seen.add(1)
      step = boundary
    return (1, self.k)


def guarded_step(c, names: Sequence[str], state, batch, guard):
  """`steps.train_step` + the NaN guard's update (pure)."""
  state, metrics = steps.train_step(c, state, batch)
  return state, metrics, guard_lib.update(guard, metrics, names, state.step)


def program(c, names: Sequence[str], length: int):
  """(state, batches, guard) -> (state, metrics stacked [length], guard) running `length` steps."""
  if length == 1:
    def one(state, batch, guard):
      state, metrics, guard = guarded_step(c, names, state, batch, guard)
      return state, jax.tree_util.tree_map(lambda x: x[None], metrics), guard

    return one

  def many(state, batches, guard):
    def body(carry, batch):
      state, guard = carry
      state, metrics, guard = guarded_step(c, names, state, batch, guard)
      return (state, guard), metrics

    (state, guard), metrics = jax.lax.scan(body, (state, guard), batches)
    return state, metrics, guard

  return many


class Dispatcher:
  """Runs n guarded steps on n host batches: stacks them (n > 1), puts them on the devices and
  calls the program compiled for n. `compile(lengths)` builds the programs ahead of the loop."""

  def __init__(self, run):
    self._run = run
    self._compiled: dict[int, jax.stages.Compiled] = {}

  def jitted(self, length: int):
    """The jitted program of `length` steps (state and guard donated)."""
    run = self._run
    rows = sh.batch_sharding(run.mesh) if length == 1 else sh.stacked_batch_sharding(run.mesh)
    return jax.jit(program(run.components, run.loss_names, length),
                   in_shardings=(run.state_sharding, rows, run.replicated),
                   out_shardings=(run.state_sharding, run.replicated, run.replicated),
                   donate_argnums=(0, 2))

  def abstract_args(self, length: int):
    """(state, batches, guard) as shapes with shardings: what `length` steps are lowered for."""
    run = self._run
    batch = run.abstract_batch(run.config.train.batch_size, stacked=0 if length == 1 else length)
    guard = (jax.ShapeDtypeStruct((), jnp.int32, sharding=run.replicated),
             jax.ShapeDtypeStruct((len(run.loss_names),), jnp.bool_, sharding=run.replicated))
    return run.abstract_state(), batch, guard

  def compile(self, lengths: Sequence[int]) -> None:
    """Compiles the programs of `lengths` not compiled yet."""
    for n in lengths:
      if n not in self._compiled:
        self._compiled[n] = self.jitted(n).trace(*self.abstract_args(n)).lower().compile()

  def __call__(self, state, batches: Sequence[dict[str, np.ndarray]], guard):
    n = len(batches)
    if n == 1:
      device = sh.put_batch({k: batches[0][k] for k in steps.BATCH_KEYS}, self._run.mesh)
    else:
      device = sh.put_batch(stack(batches), self._run.mesh, stacked=True)
    self.compile((n,))
    return self._compiled[n](state, device, guard)


def stack(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """The model's columns of n batches as [n, rows, ...] arrays (one copy of the rows)."""
  return {k: np.stack([b[k] for b in batches]) for k in steps.BATCH_KEYS}
