"""The NaN guard: every step's losses are checked on the devices, and the host reads the result
only where it syncs anyway (log steps, evaluations, saves), so the guard costs no host round trip.

On the devices the guard is a pair (first step whose losses were not all finite, or -1; which
losses were not, then), updated by `update` inside the jitted step. On the host, `NanGuard.check`
reads it and, before a save or an evaluation, also checks every floating leaf of the state (an
update can overflow while its loss was finite).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class NonFiniteError(FloatingPointError):
  """A loss or metric became NaN/Inf; the message names the step and the task."""


def initial(num_losses: int) -> tuple[np.ndarray, np.ndarray]:
  """The guard before any step: no step went non-finite."""
  return np.int32(-1), np.zeros(num_losses, bool)


def update(guard, metrics: Mapping[str, jax.Array], names: Sequence[str], step: jax.Array):
  """The guard after a step (pure, traced inside the step): records `step` and the non-finite
  losses the first time any of `names` is NaN/Inf; keeps the first record after that."""
  finite = jnp.stack([jnp.all(jnp.isfinite(metrics[k])) for k in names])
  first, bad = guard
  now = (first < 0) & ~jnp.all(finite)
  return jnp.where(now, step, first), jnp.where(now, ~finite, bad)


class NanGuard:
  """The host's side of the guard of one run.

  `value` is the device guard the dispatches thread through (replaced each time, never donated:
  the log reads a dispatch's guard after the next dispatch has taken it);
  `check(step)` raises NonFiniteError if a loss went non-finite, `check(step, state)` also if any
  state leaf did. `last_checkpoint()` describes what is left to resume from, for the message (the
  checkpoint policy sets it).
  """

  def __init__(self, run):
    self.loss_names = run.loss_names
    self.value = jax.device_put(initial(len(self.loss_names)), run.replicated)
    self.last_checkpoint: Callable[[], str] = lambda: "no checkpoint was written"
    self._run = run
    self._leaf_check = None

  def check(self, step: int, state=None, value=None) -> None:
    """`value`: a guard read earlier (a dispatch's, on the host or the devices); default: the
    latest."""
    first, bad = jax.device_get(self.value if value is None else value)
    if first >= 0:
      names = ", ".join(n for n, b in zip(self.loss_names, bad, strict=True) if b)
      what = f"non-finite {names} at step {int(first)} (found at step {step})"
    elif state is None:
      return
    else:
      leaves = [p for p, b in jax.device_get(self._nonfinite_leaves(state)).items() if b]
      if not leaves:
        return
      what = (
        f"non-finite values in the train state at step {step} "
        f"({', '.join('state' + p for p in leaves[:4])}), although every loss was finite"
      )
    raise NonFiniteError(
      f"{what}; stopped without checkpointing this state "
      f"({self.last_checkpoint()}). Lower the learning rates, clip the tower "
      "gradients (optimizer.grad_clip) or check the input data"
    )

  def compile(self) -> None:
    """Compiles the whole-state check (ahead of the loop, so no step waits for it)."""
    if self._leaf_check is None:

      def check(state):
        return {
          jax.tree_util.keystr(p): ~jnp.all(jnp.isfinite(x))
          for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
          if jnp.issubdtype(x.dtype, jnp.inexact)
        }

      jitted = jax.jit(
        check, in_shardings=(self._run.state_sharding,), out_shardings=self._run.replicated
      )
      self._leaf_check = jitted.trace(self._run.abstract_state()).lower().compile()

  def _nonfinite_leaves(self, state) -> dict[str, jax.Array]:
    """{leaf path: holds a NaN/Inf} over the floating leaves: O(state), so read only before saves
    and evaluations, which cost O(state) or more themselves."""
    self.compile()
    return self._leaf_check(state)


def check_metrics(metrics: Mapping[str, Any], step: int) -> None:
  """Raises NonFiniteError for an infinite evaluation metric (NaN is allowed: a metric undefined
  on this data, e.g. the AUC of one class)."""
  for k, v in metrics.items():
    if k.startswith("n/"):
      continue
    v = float(np.asarray(v))
    if math.isinf(v):
      raise NonFiniteError(
        f"non-finite {k} = {v} at step {step}; stopping without checkpointing "
        "this state (lower the learning rates or check the input data)"
      )
