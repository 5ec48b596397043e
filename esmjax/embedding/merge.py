"""Merging the gradients of duplicate ids, and the row gathers / scatters the optimizers use.

A batch looks a row up once per occurrence; the gradients of one id must be summed before a
row-wise optimizer sees them (Adagrad's accumulator grows with the squared *sum*, not with a sum
of squares). `merge_with_scratch` does it without sorting (the engine's path); `merge_duplicates`
is the sort-based version (tests use it as the reference).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def merge_duplicates(
  ids: jax.Array, grads: jax.Array, num_rows: int
) -> tuple[jax.Array, jax.Array]:
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
  g = jax.ops.segment_sum(
    grads[perm].astype(jnp.float32), seg, num_segments=n, indices_are_sorted=True
  )
  uids = jnp.full((n,), num_rows, ids.dtype).at[seg].set(sids, mode="drop")
  return uids, g


def merge_with_scratch(
  scratch: jax.Array, ids: jax.Array, grads: jax.Array, capacity: int | None = None
):
  """Sums the gradients of equal ids without sorting, using a persistent [V] int32 scratch row map.

  Every position writes its index into scratch[id]; one writer wins per id, and reading
  scratch[id] back gives every occurrence the same representative. Gradients are scatter-added to
  their representative, and only representatives keep their id (the rest get V: dropped). Then the
  representatives' entries are reset to -1, so the scratch is all -1 between steps at O(batch)
  cost — never an O(table) memset. Measured 8.5 ms vs 61 ms (argsort-based) for 233 k ids on 2
  CPU cores.

  `capacity` (static) bounds the number of distinct in-range ids (`FeatureLayout.max_unique`):
  with capacity U < N the representatives are numbered (a prefix sum) and the output holds U rows,
  so the optimizer reads, updates and writes U rows instead of N. A batch of 1 024 on the default
  synthetic schema has N = 58 k looked-up slots but at most 13.7 k distinct rows (small fields
  repeat). Each row's sum adds the same gradients in the same (position) order either way.

  Ids outside [0, V) are ignored (their `uids` entry is V): the row-sharded engine passes every
  device all ids of the batch, and a device merges only the rows it owns.

  Returns (scratch, uids [U], g [U, D] f32); `scratch` must be donated with the state. The reset
  scatters at `uids` (each id's representative), not at `ids`, on purpose: depending on the
  read-back orders it after the read, so XLA updates the scratch in place instead of copying it
  (a copy is O(table) per step; tests/test_sharded.py checks the compiled step for any).
  """
  v, n = scratch.shape[0], ids.shape[0]
  u = n if capacity is None else max(1, min(int(capacity), n))
  pos = jnp.arange(n, dtype=jnp.int32)
  ids = ids.astype(jnp.int32)
  valid = ids.astype(jnp.uint32) < v  # one compare for 0 <= id < V
  scratch = scatter(scratch, ids, pos)
  rep = jnp.where(valid, gather_rows(scratch, ids), pos)
  first = valid & (rep == pos)  # the representative of its id
  if u == n:
    g = (
      jnp.zeros(grads.shape, jnp.float32)
      .at[rep]
      .add(grads.astype(jnp.float32), mode="promise_in_bounds", wrap_negative_indices=False)
    )
    uids = jnp.where(first, ids, v)
  else:
    slot = jnp.cumsum(first, dtype=jnp.int32) - 1  # compact row of each representative
    dst = jnp.where(valid, slot[rep], u)  # out of range (dropped) for ids of other devices
    g = (
      jnp.zeros((u, grads.shape[1]), jnp.float32)
      .at[dst]
      .add(grads.astype(jnp.float32), mode="drop", wrap_negative_indices=False)
    )
    uids = (
      jnp.full((u,), v, jnp.int32)
      .at[jnp.where(first, slot, u)]
      .set(ids, mode="drop", wrap_negative_indices=False)
    )
  scratch = scatter(scratch, uids, jnp.full(uids.shape, -1, jnp.int32))
  return scratch, uids, g


def gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x[idx] with out-of-range rows read as 0 (negative ones too: no Python-style wrapping, which
  costs a select per index). The "unused" uids entries are V, and the sharded engine reads the
  rows other devices own this way."""
  return x.at[idx].get(mode="fill", fill_value=0, wrap_negative_indices=False)


def scatter(x, idx, val):  # out-of-range rows are dropped
  return x.at[idx].set(val.astype(x.dtype), mode="drop", wrap_negative_indices=False)
