"""The embedding engine: stacked tables outside the Flax params, looked up outside the gradient.

All fields of a model share one stacked [V, D] table per *embedding set* (ESMM-NS and the
independent baselines have one set per tower); field f owns rows offset_f : offset_f + vocab_f,
so a batch's ids become one int32 matrix `gids` [B, C] (C = single fields + multi-valued slots +
bucketised dense fields) and one gather serves every field.

The step (docs/design.md, Embedding engine): rows = lookup(table, gids) → model → grads w.r.t.
rows → merge duplicate ids → row-wise optimizer on the touched rows. `Engine` is the small
interface (init, lookup, update, `row_sharded`) that the row-sharded engine
(`esmjax.embedding.sharded`) fills in with shard_map collectives; both share `init_rows` and
`merged_update`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.extend.random as random_ext
import jax.numpy as jnp
import numpy as np

from esmjax.common import schema as schema_lib
from esmjax.embedding import merge
from esmjax.embedding import optimizers as opt_lib


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
  """Where each field lives in the stacked table and in the `gids` columns."""

  sparse_offsets: tuple[int, ...]
  mv_offsets: tuple[int, ...]  # one per multi-valued field
  mv_lens: tuple[int, ...]
  dense_offsets: tuple[int, ...]  # bucketised dense fields (empty unless dense_mode == 'bucket')
  dense_boundaries: tuple[tuple[float, ...], ...]
  num_rows: int  # before padding
  padded_rows: int  # rounded up so row-sharding divides evenly

  @property
  def vocab_sizes(self) -> tuple[int, ...]:
    """Rows of each field in table order: single-valued, multi-valued, bucketised dense."""
    starts = (*self.sparse_offsets, *self.mv_offsets, *self.dense_offsets)
    return tuple(e - s for s, e in zip(starts, (*starts[1:], self.num_rows), strict=True))

  def max_unique(self, batch_rows: int) -> int:
    """An upper bound on the distinct table rows `batch_rows` examples look up: each field adds
    min(its lookups, its rows). `global_ids` keeps every id inside its field's rows, so the bound
    holds for any input."""
    looks = (
      (batch_rows,) * len(self.sparse_offsets)
      + tuple(batch_rows * n for n in self.mv_lens)
      + (batch_rows,) * len(self.dense_offsets)
    )
    return min(self.num_rows, sum(min(n, v) for n, v in zip(looks, self.vocab_sizes, strict=True)))

  @property
  def num_columns(self) -> int:
    return len(self.sparse_offsets) + sum(self.mv_lens) + len(self.dense_offsets)

  @classmethod
  def from_schema(
    cls, schema: schema_lib.Schema, *, bucketise_dense: bool, row_multiple: int = 1
  ) -> FeatureLayout:
    off = 0
    sparse_offsets, mv_offsets, dense_offsets, bounds = [], [], [], []
    for f in schema.sparse:
      sparse_offsets.append(off)
      off += int(f.vocab_size)
    for f in schema.multi:
      mv_offsets.append(off)
      off += int(f.vocab_size)
    if bucketise_dense:
      for f in schema.dense:
        if not f.boundaries:
          raise ValueError(
            f"model.dense_mode='bucket' but dense field {f.name!r} has no boundaries "
            "in the dataset manifest; use model.dense_mode='tanh'"
          )
        dense_offsets.append(off)
        bounds.append(tuple(float(b) for b in f.boundaries))
        off += len(f.boundaries) + 1
    padded = -(-off // row_multiple) * row_multiple
    return cls(
      tuple(sparse_offsets),
      tuple(mv_offsets),
      tuple(int(f.max_len) for f in schema.multi),
      tuple(dense_offsets),
      tuple(bounds),
      off,
      padded,
    )

  def global_ids(self, sparse: jax.Array, mv_ids: jax.Array, dense: jax.Array) -> jax.Array:
    """Per-field ids -> stacked-table row ids, [B, C] int32 (inside jit). An id outside its field's
    [0, vocab) is clamped into it: it never reads or trains another field's rows."""
    top = np.asarray(self.vocab_sizes, np.int32) - 1
    n_sparse, n_mv = len(self.sparse_offsets), len(self.mv_lens)
    cols = []
    if self.sparse_offsets:
      ids = jnp.clip(sparse.astype(jnp.int32), 0, jnp.asarray(top[:n_sparse]))
      cols.append(ids + jnp.asarray(self.sparse_offsets, jnp.int32))
    if self.mv_lens:
      mv_off = np.repeat(np.asarray(self.mv_offsets, np.int32), self.mv_lens)
      mv_top = np.repeat(top[n_sparse : n_sparse + n_mv], self.mv_lens)
      cols.append(jnp.clip(mv_ids.astype(jnp.int32), 0, jnp.asarray(mv_top)) + jnp.asarray(mv_off))
    if self.dense_offsets:
      buckets = [
        jnp.searchsorted(jnp.asarray(b, jnp.float32), dense[:, i], side="right").astype(jnp.int32)
        for i, b in enumerate(self.dense_boundaries)
      ]
      cols.append(jnp.stack(buckets, 1) + jnp.asarray(self.dense_offsets, jnp.int32))
    return jnp.concatenate(cols, axis=1)


INIT_CHUNK_ROWS = 1 << 16  # rows generated per loop step of `init_rows`


def init_rows(key: jax.Array, first_row, num_rows: int, dim: int, std: float, dtype) -> jax.Array:
  """Rows [first_row, first_row + num_rows) of a table whose row r is std·N(0, 1)^dim, drawn by
  hashing (key, r, column) with threefry: a function of the row alone, so a table initialises the
  same on any device count and padding (8-device and 1-device runs start equal), and each device
  of a row-sharded table draws only its own rows (`first_row` may be traced: the device's offset).

  Memory: the output plus one chunk. `jax.random.normal(key, (V, D))` keeps two u32 [V, D] buffers
  of threefry state alive (measured: 3.1 GB peak for a 0.72 GB table), which a 1e8-row table
  cannot afford. Chunks are written with dynamic_update_slice; the last one is shifted back to end
  at the table's end, and rewriting the overlap is harmless because rows depend only on r.
  """
  k = min(INIT_CHUNK_ROWS, num_rows)
  if k == 0:
    return jnp.zeros((0, dim), dtype)
  keypair = jax.random.bits(
    key, (2,), jnp.uint32
  )  # a threefry key from any PRNG implementation's key
  pairs = -(-dim // 2)  # one threefry call gives two u32 words
  cols = jnp.broadcast_to(jnp.arange(pairs, dtype=jnp.uint32), (k, pairs))
  lo = jnp.nextafter(jnp.float32(-1.0), jnp.float32(0.0))

  def body(i, buf):
    start = jnp.minimum(i * k, num_rows - k)
    rows = jnp.broadcast_to(
      (first_row + start + jnp.arange(k, dtype=jnp.int32)).astype(jnp.uint32)[:, None], (k, pairs)
    )
    bits = random_ext.threefry_2x32(keypair, jnp.stack([rows, cols]))  # [2, k, pairs]
    bits = jnp.concatenate([bits[0], bits[1]], axis=1)[:, :dim]
    # u32 -> uniform [0, 1) -> (-1, 1) -> normal (jax.random.normal's erfinv transform).
    u = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0
    z = jnp.sqrt(2.0) * jax.lax.erf_inv(jnp.maximum(2.0 * u - 1.0, lo))
    return jax.lax.dynamic_update_slice(buf, (std * z).astype(dtype), (start, 0))

  return jax.lax.fori_loop(0, -(-num_rows // k), body, jnp.zeros((num_rows, dim), dtype))


def merged_update(
  opt: opt_lib.SparseOptimizer,
  dim: int,
  tables,
  slots,
  scratch,
  ids: jax.Array,
  grads: dict[str, jax.Array],
  step: jax.Array,
  rows: dict[str, jax.Array] | None = None,
  capacity: int | None = None,
):
  """Merge duplicate ids, then the row-wise optimizer on each set: the update of one device.

  `ids` [N] index this device's tables (out-of-range ids are skipped: other devices own them);
  `grads[n]` and `rows[n]` are [N, D] aligned with `ids`. The sets share ids, so their gradients
  are merged side by side in one pass and split afterwards.

  `capacity` (static; `FeatureLayout.max_unique`) bounds the distinct ids: with capacity U < N the
  merge hands the optimizer U compact rows instead of N (`merge.merge_with_scratch`), which gathers
  them from the table. The merged gradients are the same bits, and the optimizer does the same
  arithmetic on them (XLA may vectorise row-wise Adagrad's per-row mean differently for U and N
  rows: a last-bit difference on some rows).

  `rows` (the rows the lookup read) spare the optimizer a second random gather over the table, but
  only pay off when the table is larger than the [N, D] rows themselves: a smaller table stays in
  cache, and gathering its touched rows again beats streaming all N rows (measured on 2 CPU cores:
  +4.5 % step rate at 1e5 rows × 23 fields, −3 % at 0.95e5 rows × 57 columns; and the gather's
  cache misses grow with the table — at 1e7 rows × 23 fields a step took 111 ms of CPU without
  `rows`, 99 ms with them).
  """
  names = list(tables)
  n = ids.shape[0]
  if rows is not None and tables[names[0]].shape[0] <= n:
    rows = None
  g_all = [grads[name].reshape(n, -1) for name in names]
  g_all = g_all[0] if len(g_all) == 1 else jnp.concatenate(g_all, axis=1)
  scratch, uids, g_all = merge.merge_with_scratch(scratch, ids, g_all, capacity)
  if uids.shape[0] < n:
    rows = None  # compacted: the U touched rows are gathered from the table
  new_t, new_s = {}, {}
  for i, name in enumerate(names):
    g = g_all[:, i * dim : (i + 1) * dim]
    r = None if rows is None else rows[name].reshape(n, -1)
    new_t[name], new_s[name] = opt_lib.apply_rows(opt, tables[name], slots[name], uids, g, step, r)
  return new_t, new_s, scratch


@dataclasses.dataclass(frozen=True)
class Engine:
  """Single-device (replicated) engine: plain gather for lookup, merge + row-wise optimizer for
  update."""

  layout: FeatureLayout
  dim: int
  table_names: tuple[str, ...]
  opt: opt_lib.SparseOptimizer
  init_std: float = 0.01
  param_dtype: Any = jnp.float32  # table storage dtype (bf16 option); slots stay f32

  row_sharded = False  # tables replicated; see esmjax.embedding.sharded for rows over the mesh

  def init(self, rng: jax.Array):
    """(tables, slots, scratch): tables ~ N(0, init_std²), a distinct stream per set (so the
    towers of ESMM-NS start apart); scratch is the all -1 row map of `merge_with_scratch`."""
    v = self.layout.padded_rows
    tables = {
      name: init_rows(jax.random.fold_in(rng, i), 0, v, self.dim, self.init_std, self.param_dtype)
      for i, name in enumerate(self.table_names)
    }
    slots = {name: self.opt.init_slots(v, self.dim) for name in self.table_names}
    return tables, slots, jnp.full((v,), -1, jnp.int32)

  def lookup(self, tables: dict[str, jax.Array], gids: jax.Array) -> dict[str, jax.Array]:
    """{set: rows [B, C, D]} in the table dtype.

    Ids are in range by construction (per-field ids < vocab, shifted by the field's offset), so the
    gather clamps instead of masking: a NaN fill for out-of-range ids costs a select pass over the
    [B, C, D] rows (measured ~2 ms of a ~80 ms step), and would not catch an id that strays into
    the next field's rows anyway.
    """
    return {n: t.at[gids].get(mode="clip", wrap_negative_indices=False) for n, t in tables.items()}

  def update(
    self,
    tables,
    slots,
    scratch,
    gids: jax.Array,
    grads: dict[str, jax.Array],
    step: jax.Array,
    rows: dict[str, jax.Array] | None = None,
  ):
    """Row-wise update of the touched rows of every set -> (tables, slots, scratch).

    `rows`: what `lookup` returned this step (optional; saves a second gather over the table).
    """
    return merged_update(
      self.opt,
      self.dim,
      tables,
      slots,
      scratch,
      gids.reshape(-1),
      grads,
      step,
      rows,
      capacity=self.layout.max_unique(gids.shape[0]),
    )
