"""Several training steps per host dispatch (`train.steps_per_dispatch` = k).

With k > 1 a dispatch is one compiled program: a loop of n ≤ k guarded train steps over k batch
slots stacked on a leading axis (n is an argument, so the same program runs any n), and the
per-step host cost (Python, the transfer calls, the dispatch) is paid once per dispatch. Logging,
the NaN guard, evaluations and checkpoints stay exact at step granularity because a dispatch never
crosses a log / eval / checkpoint / final step: the plan makes the dispatch before one shorter.
One program is compiled, before the loop starts (k = 1: the plain single step). Each step is the
same computation as a single step, and the per-step metrics come back stacked, so runs with any k
log the same losses and end in the same state (tests/test_dispatch.py checks both bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from esmjax.core import guard as guard_lib
from esmjax.core import sharding as sh
from esmjax.core import steps


def boundary_intervals(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The step intervals a dispatch must not cross: log lines, evaluations and checkpoints."""
  every = [int(config.train.log_every)]
  if config.train.eval_every > 0:
    every.append(int(config.train.eval_every))
  if config.checkpoint.enabled:
    every.append(int(config.checkpoint.every_steps))
  return tuple(every)


class Plan:
  """How many steps each dispatch runs: k, or fewer to end exactly on the next boundary (a
  multiple of one of `every`, or `total`)."""

  def __init__(self, k: int, total: int, every: Sequence[int]):
    self.k, self.total, self.every = int(k), int(total), tuple(int(e) for e in every if e > 0)

  def next_boundary(self, step: int) -> int:
    return min([self.total] + [(step // e + 1) * e for e in self.every])

  def next_length(self, step: int) -> int:
    return min(self.k, self.next_boundary(step) - step)


def guarded_step(c, names: Sequence[str], state, batch, guard):
  """`steps.train_step` + the NaN guard's update (pure)."""
  state, metrics = steps.train_step(c, state, batch)
  return state, metrics, guard_lib.update(guard, metrics, names, state.step)


def program(c, names: Sequence[str], capacity: int):
  """The dispatch program for up to `capacity` steps, returning (state, metrics stacked
  [capacity], guard); rows past the steps run hold zeros.

  capacity 1: (state, batch, guard). Otherwise (state, batches [capacity, ...], guard, n): the
  first n batches, one step each.
  """
  if capacity == 1:

    def one(state, batch, guard):
      state, metrics, guard = guarded_step(c, names, state, batch, guard)
      return state, jax.tree_util.tree_map(lambda x: x[None], metrics), guard

    return one

  def up_to_capacity(state, batches, guard, n):
    first = jax.tree_util.tree_map(lambda x: x[0], batches)
    shapes = jax.eval_shape(lambda s, b: steps.train_step(c, s, b)[1], state, first)
    stacked = {k: jnp.zeros((capacity,) + v.shape, v.dtype) for k, v in shapes.items()}

    def body(i, carry):
      state, guard, stacked = carry
      batch = jax.tree_util.tree_map(
        lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), batches
      )
      state, metrics, guard = guarded_step(c, names, state, batch, guard)
      return state, guard, {k: v.at[i].set(metrics[k]) for k, v in stacked.items()}

    state, guard, stacked = jax.lax.fori_loop(0, n, body, (state, guard, stacked))
    return state, stacked, guard

  return up_to_capacity


class Dispatcher:
  """Runs n ≤ k guarded steps on n host batches: stacks them into the k slots (k > 1), puts them
  on the devices and calls the compiled program. `compile()` builds it ahead of the loop."""

  def __init__(self, run, capacity: int):
    self._run, self.capacity = run, int(capacity)
    self._compiled = None
    self._counts: dict[int, jax.Array] = {}  # n -> n on the devices (made once per n)

  def jitted(self):
    """The jitted program (the state donated; the guard is not, as the log reads it one dispatch
    later)."""
    run = self._run
    rep = run.replicated
    if self.capacity == 1:
      in_shardings = (run.state_sharding, sh.batch_sharding(run.mesh), rep)
    else:
      in_shardings = (run.state_sharding, sh.stacked_batch_sharding(run.mesh), rep, rep)
    return jax.jit(
      program(run.components, run.loss_names, self.capacity),
      in_shardings=in_shardings,
      out_shardings=(run.state_sharding, rep, rep),
      donate_argnums=(0,),
    )

  def abstract_args(self):
    """The program's arguments as shapes with shardings (what it is lowered for)."""
    run, rep = self._run, self._run.replicated
    stacked = 0 if self.capacity == 1 else self.capacity
    batch = run.abstract_batch(run.config.train.batch_size, stacked=stacked)
    guard = (
      jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
      jax.ShapeDtypeStruct((len(run.loss_names),), jnp.bool_, sharding=rep),
    )
    args = (run.abstract_state(), batch, guard)
    if self.capacity == 1:
      return args
    return args + (jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),)

  def compile(self) -> None:
    if self._compiled is None:
      self._compiled = self.jitted().trace(*self.abstract_args()).lower().compile()

  def __call__(self, state, batches: Sequence[dict[str, np.ndarray]], guard):
    """-> (state, metrics stacked [k]: the first len(batches) are these steps', guard)."""
    self.compile()
    mesh = self._run.mesh
    if self.capacity == 1:
      (batch,) = batches
      return self._compiled(
        state, sh.put_batch({k: batch[k] for k in steps.BATCH_KEYS}, mesh), guard
      )
    n = len(batches)
    if n not in self._counts:
      self._counts[n] = jax.device_put(np.int32(n), self._run.replicated)
    device = sh.put_batch(stack(batches, self.capacity), mesh, stacked=True)
    return self._compiled(state, device, guard, self._counts[n])


def stack(batches: Sequence[dict[str, np.ndarray]], slots: int) -> dict[str, np.ndarray]:
  """The model's columns of n ≤ `slots` batches as [slots, rows, ...] arrays (one copy of the rows;
  slots past n hold zeros)."""
  if len(batches) == slots:
    return {k: np.stack([b[k] for b in batches]) for k in steps.BATCH_KEYS}
  out = {k: np.zeros((slots,) + batches[0][k].shape, batches[0][k].dtype) for k in steps.BATCH_KEYS}
  for i, b in enumerate(batches):
    for k in steps.BATCH_KEYS:
      out[k][i] = b[k]
  return out
