"""Sparse, row-wise optimizers for embedding tables.

A step touches only the rows a batch looked up. Gradients arrive per looked-up slot ([N, D] with
N = batch × slots); duplicates are merged first (`merge_duplicates`), then an optimizer updates the
unique rows with gathers and scatters on donated buffers — never an O(table) pass.

Semantics: each equals its dense counterpart applied to the merged gradient, restricted to touched
rows. For SGD, Adagrad and row-wise Adagrad that is exactly the dense optimizer, since a zero
gradient leaves a row and its slot unchanged. Lazy Adam (TF's LazyAdam) differs from dense Adam on
purpose: untouched rows keep their moments and weights instead of decaying/moving, and the bias
correction uses the global step. FTRL likewise updates touched rows only.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import jax
import jax.numpy as jnp


class SparseOptimizer(str, enum.Enum):
  """Row-wise optimizers for embedding tables (the torchrec `EmbOptimType` idea)."""

  SGD = "sgd"  # w -= lr·g. No slots.
  ADAGRAD = "adagrad"  # a += g² (per element); w -= lr·g/(√a + eps). One [V, D] slot.
  ROWWISE_ADAGRAD = "rowwise_adagrad"  # a += mean(g²) (per row); w -= lr·g/(√a + eps). One [V] slot.
  LAZY_ADAM = "lazy_adam"  # Adam moments updated only on touched rows; bias correction by global step.
  FTRL = "ftrl"  # FTRL-Proximal (McMahan et al. 2013), per element, with l1/l2; slots z, n [V, D].

  @classmethod
  def parse(cls, value: str, key: str = "embedding.optimizer") -> "SparseOptimizer":
    try:
      return cls(value)
    except ValueError:
      raise ValueError(f"{key}={value!r} is not a sparse optimizer; allowed: {[m.value for m in cls]}") from None


@dataclasses.dataclass(frozen=True)
class SparseOptConfig:
  kind: SparseOptimizer = SparseOptimizer.ROWWISE_ADAGRAD
  learning_rate: float = 0.05
  eps: float = 1e-8
  initial_accumulator: float = 0.0  # Adagrad family
  beta1: float = 0.9  # lazy Adam
  beta2: float = 0.999
  l1: float = 0.0  # FTRL
  l2: float = 0.0
  ftrl_beta: float = 1.0


def init_slots(cfg: SparseOptConfig, num_rows: int, dim: int, dtype=jnp.float32) -> dict[str, jax.Array]:
  """Optimizer slots for one table (always f32, even for bf16 tables)."""
  del dtype
  k = cfg.kind
  if k == SparseOptimizer.SGD:
    return {}
  if k == SparseOptimizer.ADAGRAD:
    return {"acc": jnp.full((num_rows, dim), cfg.initial_accumulator, jnp.float32)}
  if k == SparseOptimizer.ROWWISE_ADAGRAD:
    return {"acc": jnp.full((num_rows,), cfg.initial_accumulator, jnp.float32)}
  if k == SparseOptimizer.LAZY_ADAM:
    return {"m": jnp.zeros((num_rows, dim), jnp.float32), "v": jnp.zeros((num_rows, dim), jnp.float32)}
  if k == SparseOptimizer.FTRL:
    return {"z": jnp.zeros((num_rows, dim), jnp.float32),
            "n": jnp.full((num_rows, dim), cfg.initial_accumulator, jnp.float32)}
  raise ValueError(k)


def slot_shapes(cfg: SparseOptConfig, num_rows: int, dim: int) -> dict[str, tuple[int, ...]]:
  return {k: v.shape for k, v in jax.eval_shape(lambda: init_slots(cfg, num_rows, dim)).items()}


def merge_duplicates(ids: jax.Array, grads: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
  """Sums the gradients of equal ids: one sort, segment boundaries, one segment-sum.

  Returns (uids [N], g [N, D]): the unique ids first (in ascending order) then `num_rows`
  (out of range, dropped by the scatters) in the unused tail; `g` aligned with `uids`.
  Why not `jnp.unique`: it sorts again and is measured ~6× slower than one argsort here.
  """
  n = ids.shape[0]
  perm = jnp.argsort(ids)
  sids = ids[perm]
  start = jnp.concatenate([jnp.ones((1,), bool), sids[1:] != sids[:-1]])
  seg = jnp.cumsum(start, dtype=jnp.int32) - 1
  g = jax.ops.segment_sum(grads[perm].astype(jnp.float32), seg, num_segments=n, indices_are_sorted=True)
  uids = jnp.full((n,), num_rows, ids.dtype).at[seg].set(sids, mode="drop")
  return uids, g


def merge_with_scratch(scratch: jax.Array, ids: jax.Array, grads: jax.Array):
  """Sums the gradients of equal ids without sorting, using a persistent [V] int32 scratch row map.

  Every position writes its index into scratch[id]; one writer wins per id, and reading
  scratch[id] back gives every occurrence the same representative. Gradients are scatter-added to
  their representative, and only representatives keep their id (the rest get V: dropped). Then the
  representatives' entries are reset to -1, so the scratch is all -1 between steps at O(batch)
  cost — never an O(table) memset. Measured 8.5 ms vs 61 ms (argsort-based) for 233 k ids on 2
  CPU cores.

  Ids outside [0, V) are ignored (their `uids` entry is V): the row-sharded engine passes every
  device all ids of the batch, and a device merges only the rows it owns.

  Returns (scratch, uids [N], g [N, D] f32); `scratch` must be donated with the state. The reset
  scatters at `uids` (each id's representative), not at `ids`, on purpose: depending on the
  read-back orders it after the read, so XLA updates the scratch in place instead of copying it
  (a copy is O(table) per step; tests/test_sharded.py checks the compiled step for any).
  """
  v, n = scratch.shape[0], ids.shape[0]
  pos = jnp.arange(n, dtype=jnp.int32)
  ids = ids.astype(jnp.int32)
  valid = ids.astype(jnp.uint32) < v  # one compare for 0 <= id < V
  scratch = _scatter(scratch, ids, pos)
  rep = jnp.where(valid, gather_rows(scratch, ids), pos)
  g = jnp.zeros(grads.shape, jnp.float32).at[rep].add(
      grads.astype(jnp.float32), mode="promise_in_bounds", wrap_negative_indices=False)
  uids = jnp.where(valid & (rep == pos), ids, v)
  scratch = _scatter(scratch, uids, jnp.full((n,), -1, jnp.int32))
  return scratch, uids, g


def gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x[idx] with out-of-range rows read as 0 (negative ones too: no Python-style wrapping, which
  costs a select per index). The "unused" uids entries are V, and the sharded engine reads the
  rows other devices own this way."""
  return x.at[idx].get(mode="fill", fill_value=0, wrap_negative_indices=False)


def _scatter(x, idx, val):  # out-of-range rows are dropped
  return x.at[idx].set(val.astype(x.dtype), mode="drop", wrap_negative_indices=False)


def apply_rows(cfg: SparseOptConfig, table: jax.Array, slots: dict[str, jax.Array], uids: jax.Array,
               g: jax.Array, step: jax.Array, rows: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Updates rows `uids` (unique; out-of-range entries ignored) with merged gradients `g`.

  `step` is the 0-based global step (lazy Adam's bias correction uses step + 1). `rows`, if given,
  must be `table[uids]` wherever uids is in range (the engine passes the rows it looked up for the
  forward pass): it saves a second random gather over the table, whose cache misses grow with V.
  Arithmetic is f32 whatever the table dtype; the new rows are rounded to the table dtype once.
  """
  lr, eps, k = cfg.learning_rate, cfg.eps, cfg.kind
  w = (gather_rows(table, uids) if rows is None else rows).astype(jnp.float32)
  if k == SparseOptimizer.SGD:
    return _scatter(table, uids, w - lr * g), slots
  if k == SparseOptimizer.ADAGRAD:
    a = gather_rows(slots["acc"], uids) + g * g
    w = w - lr * g / (jnp.sqrt(a) + eps)
    return _scatter(table, uids, w), {"acc": _scatter(slots["acc"], uids, a)}
  if k == SparseOptimizer.ROWWISE_ADAGRAD:
    a = gather_rows(slots["acc"], uids) + jnp.mean(g * g, axis=-1)
    w = w - lr * g / (jnp.sqrt(a)[:, None] + eps)
    return _scatter(table, uids, w), {"acc": _scatter(slots["acc"], uids, a)}
  if k == SparseOptimizer.LAZY_ADAM:
    b1, b2 = cfg.beta1, cfg.beta2
    t = (step + 1).astype(jnp.float32)
    m = b1 * gather_rows(slots["m"], uids) + (1 - b1) * g
    v = b2 * gather_rows(slots["v"], uids) + (1 - b2) * g * g
    mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    w = w - lr * mhat / (jnp.sqrt(vhat) + eps)
    return _scatter(table, uids, w), {"m": _scatter(slots["m"], uids, m), "v": _scatter(slots["v"], uids, v)}
  if k == SparseOptimizer.FTRL:
    z, n = gather_rows(slots["z"], uids), gather_rows(slots["n"], uids)
    n_new = n + g * g
    sigma = (jnp.sqrt(n_new) - jnp.sqrt(n)) / lr
    z = z + g - sigma * w
    w = jnp.where(jnp.abs(z) <= cfg.l1, 0.0,
                  -(z - jnp.sign(z) * cfg.l1) / ((cfg.ftrl_beta + jnp.sqrt(n_new)) / lr + cfg.l2))
    return _scatter(table, uids, w), {"z": _scatter(slots["z"], uids, z), "n": _scatter(slots["n"], uids, n_new)}
  raise ValueError(k)


def dense_reference_update(cfg: SparseOptConfig, table: jax.Array, slots: dict[str, Any],
                           dense_grad: jax.Array, step: jax.Array, touched: jax.Array):
  """The same optimizer applied to a dense [V, D] gradient (tests only: O(table) by design).

  `touched` [V] bool marks looked-up rows; lazy Adam and FTRL update only those, as documented.
  """
  uids = jnp.where(touched, jnp.arange(table.shape[0]), table.shape[0])
  return apply_rows(cfg, table, slots, uids, dense_grad, step)
