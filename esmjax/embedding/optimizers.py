"""Sparse, row-wise optimizers for embedding tables: one object per optimizer, on a registry.

A step touches only the rows a batch looked up. Gradients arrive per looked-up slot ([N, D] with
N = batch × slots); duplicates are merged first (`esmjax.embedding.merge`), then `apply_rows`
gathers the unique rows and their slots, lets the optimizer update them, and scatters them back
on donated buffers — never an O(table) pass.

An optimizer is a frozen dataclass (jax-tpu-embedding's `OptimizerSpec` idea): its fields are its
hyperparameters (declared with `esmjax.common.hparams.field`, read from `config.embedding` by name
and range-checked there), `init_slots` makes its slots and `update` is its per-row arithmetic. The
engines, the row-sharded engine and checkpoints see only `init_slots` / `apply_rows`, nothing per
optimizer. Adding one: a subclass with `name`, `init_slots` and `update`, decorated `@register`.

Semantics: each equals its dense counterpart applied to the merged gradient, restricted to touched
rows. For SGD, Adagrad and row-wise Adagrad that is exactly the dense optimizer, since a zero
gradient leaves a row and its slot unchanged. Lazy Adam (TF's LazyAdam) differs from dense Adam on
purpose: untouched rows keep their moments and weights instead of decaying/moving, and the bias
correction uses the global step. FTRL likewise updates touched rows only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from esmjax.common import hparams
from esmjax.embedding import merge

_OPTIMIZERS: dict[str, type[SparseOptimizer]] = {}


def register(cls):
  """Class decorator: registers a `SparseOptimizer` subclass under its `name`."""
  if not cls.name or cls.name in _OPTIMIZERS:
    raise TypeError(f"sparse optimizer {cls.__qualname__}: missing or duplicate name {cls.name!r}")
  _OPTIMIZERS[cls.name] = dataclasses.dataclass(frozen=True)(cls)
  return _OPTIMIZERS[cls.name]


def names() -> list[str]:
  return list(_OPTIMIZERS)


def get(name: str, key: str = "embedding.optimizer") -> type[SparseOptimizer]:
  if name not in _OPTIMIZERS:
    raise ValueError(f"{key}={name!r} is not a sparse optimizer; allowed: {names()}")
  return _OPTIMIZERS[name]


def from_config(section: Mapping[str, Any]) -> SparseOptimizer:
  """The optimizer `config.embedding` names, each hyperparameter read from the section by name."""
  return get(section["optimizer"]).from_section(section)


def make(name: str, **values) -> SparseOptimizer:
  """Optimizer `name` with the given hyperparameters; those it does not declare are ignored (one
  flat set of keys serves every optimizer, as in `config.embedding`)."""
  return get(name).from_section(values)


def hyperparameters() -> dict[str, dataclasses.Field]:
  """{key: declaration} over every registered optimizer (one flat `config.embedding`)."""
  return hparams.merge_declarations(_OPTIMIZERS.items(), "embedding")


def default_hyperparameters() -> dict[str, Any]:
  return {k: f.default for k, f in hyperparameters().items()}


def check_section(section: Mapping[str, Any]) -> None:
  """ValueError for an unknown optimizer or a hyperparameter outside its declared range (every
  optimizer's keys are checked: one section serves them all)."""
  get(section["optimizer"])
  for key, f in hyperparameters().items():
    if key in section:
      hparams.check("embedding", key, section[key], f)


def _eps():
  return hparams.field(1e-8, "Adagrad / Adam denominator epsilon", gt=0)


def _initial_accumulator():
  return hparams.field(0.0, "Adagrad family / FTRL starting accumulator", ge=0)


@dataclasses.dataclass(frozen=True)
class SparseOptimizer:
  """A row-wise optimizer: hyperparameters (fields), slots (`init_slots`), update (`update`)."""

  learning_rate: float = hparams.field(0.05, "row-wise optimizer learning rate", gt=0)

  name: ClassVar[str] = ""

  @classmethod
  def from_section(cls, section: Mapping[str, Any]) -> SparseOptimizer:
    return hparams.from_section(cls, section, "embedding")

  def init_slots(self, num_rows: int, dim: int) -> dict[str, jax.Array]:
    """Slots of one [num_rows, dim] table (always f32, even for bf16 tables)."""
    return {}

  def update(
    self, w: jax.Array, slots: dict[str, jax.Array], g: jax.Array, step: jax.Array
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """New rows and slot rows from rows `w` [U, D] (f32), their slot rows and merged gradients `g`;
    `step` is the 0-based global step."""
    raise NotImplementedError


@register
class Sgd(SparseOptimizer):
  """w -= lr·g. No slots."""

  name = "sgd"

  def update(self, w, slots, g, step):
    return w - self.learning_rate * g, slots


@register
class Adagrad(SparseOptimizer):
  """a += g² (per element); w -= lr·g/(√a + eps). One [V, D] slot."""

  eps: float = _eps()
  initial_accumulator: float = _initial_accumulator()
  name = "adagrad"

  def init_slots(self, num_rows, dim):
    return {"acc": jnp.full((num_rows, dim), self.initial_accumulator, jnp.float32)}

  def update(self, w, slots, g, step):
    a = slots["acc"] + g * g
    return w - self.learning_rate * g / (jnp.sqrt(a) + self.eps), {"acc": a}


@register
class RowwiseAdagrad(Adagrad):
  """a += mean(g²) (per row); w -= lr·g/(√a + eps). One [V] slot (torchrec's
  EXACT_ROWWISE_ADAGRAD)."""

  name = "rowwise_adagrad"

  def init_slots(self, num_rows, dim):
    return {"acc": jnp.full((num_rows,), self.initial_accumulator, jnp.float32)}

  def update(self, w, slots, g, step):
    a = slots["acc"] + jnp.mean(g * g, axis=-1)
    return w - self.learning_rate * g / (jnp.sqrt(a)[:, None] + self.eps), {"acc": a}


@register
class LazyAdam(SparseOptimizer):
  """Adam moments updated only on touched rows; bias correction by the global step."""

  eps: float = _eps()
  beta1: float = hparams.field(0.9, "lazy Adam first-moment decay", ge=0, lt=1)
  beta2: float = hparams.field(0.999, "lazy Adam second-moment decay", ge=0, lt=1)
  name = "lazy_adam"

  def init_slots(self, num_rows, dim):
    return {
      "m": jnp.zeros((num_rows, dim), jnp.float32),
      "v": jnp.zeros((num_rows, dim), jnp.float32),
    }

  def update(self, w, slots, g, step):
    b1, b2 = self.beta1, self.beta2
    t = (step + 1).astype(jnp.float32)
    m = b1 * slots["m"] + (1 - b1) * g
    v = b2 * slots["v"] + (1 - b2) * g * g
    mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
    return w - self.learning_rate * mhat / (jnp.sqrt(vhat) + self.eps), {"m": m, "v": v}


@register
class Ftrl(SparseOptimizer):
  """FTRL-Proximal (McMahan et al. 2013), per element, with l1/l2; slots z, n [V, D]."""

  initial_accumulator: float = _initial_accumulator()
  l1: float = hparams.field(0.0, "FTRL l1 regularisation", ge=0)
  l2: float = hparams.field(0.0, "FTRL l2 regularisation", ge=0)
  ftrl_beta: float = hparams.field(1.0, "FTRL beta (per-coordinate learning-rate offset)", ge=0)
  name = "ftrl"

  def init_slots(self, num_rows, dim):
    return {
      "z": jnp.zeros((num_rows, dim), jnp.float32),
      "n": jnp.full((num_rows, dim), self.initial_accumulator, jnp.float32),
    }

  def update(self, w, slots, g, step):
    lr = self.learning_rate
    z, n = slots["z"], slots["n"]
    n_new = n + g * g
    sigma = (jnp.sqrt(n_new) - jnp.sqrt(n)) / lr
    z = z + g - sigma * w
    shrunk = -(z - jnp.sign(z) * self.l1) / ((self.ftrl_beta + jnp.sqrt(n_new)) / lr + self.l2)
    w = jnp.where(jnp.abs(z) <= self.l1, 0.0, shrunk)
    return w, {"z": z, "n": n_new}


def apply_rows(
  opt: SparseOptimizer,
  table: jax.Array,
  slots: dict[str, jax.Array],
  uids: jax.Array,
  g: jax.Array,
  step: jax.Array,
  rows: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Updates rows `uids` (unique; out-of-range entries ignored) with merged gradients `g`.

  `step` is the 0-based global step (lazy Adam's bias correction uses step + 1). `rows`, if given,
  must be `table[uids]` wherever uids is in range (the engine passes the rows it looked up for the
  forward pass): it saves a second random gather over the table, whose cache misses grow with V.
  Arithmetic is f32 whatever the table dtype; the new rows are rounded to the table dtype once.
  """
  w = (merge.gather_rows(table, uids) if rows is None else rows).astype(jnp.float32)
  w, new = opt.update(w, {k: merge.gather_rows(s, uids) for k, s in slots.items()}, g, step)
  new_slots = {k: merge.scatter(slots[k], uids, v) for k, v in new.items()}
  return merge.scatter(table, uids, w), new_slots


def dense_reference_update(
  opt: SparseOptimizer,
  table: jax.Array,
  slots: dict[str, Any],
  dense_grad: jax.Array,
  step: jax.Array,
  touched: jax.Array,
):
  """The same optimizer applied to a dense [V, D] gradient (tests only: O(table) by design).

  `touched` [V] bool marks looked-up rows; lazy Adam and FTRL update only those, as documented.
  """
  uids = jnp.where(touched, jnp.arange(table.shape[0]), table.shape[0])
  return apply_rows(opt, table, slots, uids, dense_grad, step)
