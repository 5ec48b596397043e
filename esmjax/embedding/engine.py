"""The embedding engine: stacked tables outside the Flax params, looked up outside the gradient.

All fields of a model share one stacked [V, D] table per *embedding set* (ESMM-NS and the
independent baselines have one set per tower); field f owns rows offset_f : offset_f + vocab_f,
so a batch's ids become one int32 matrix `gids` [B, C] (C = single fields + multi-valued slots +
bucketised dense fields) and one gather serves every field.

The step (DESIGN.md §4): rows = lookup(table, gids) → model → grads w.r.t. rows → merge duplicate
ids → row-wise optimizer on the touched rows. `Engine` is the small interface that the sharded
engine (`esmjax.embedding.sharded`) fills in with shard_map collectives.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esmjax.data import dataset as ds_lib
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
  def num_columns(self) -> int:
    return len(self.sparse_offsets) + sum(self.mv_lens) + len(self.dense_offsets)

  @classmethod
  def from_schema(cls, schema: ds_lib.Schema, *, bucketise_dense: bool, row_multiple: int = 1) -> "FeatureLayout":
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
          raise ValueError(f"model.dense_mode='bucket' but dense field {f.name!r} has no boundaries "
                           "in the dataset manifest; use model.dense_mode='tanh'")
        dense_offsets.append(off)
        bounds.append(tuple(float(b) for b in f.boundaries))
        off += len(f.boundaries) + 1
    padded = -(-off // row_multiple) * row_multiple
    return cls(tuple(sparse_offsets), tuple(mv_offsets), tuple(int(f.max_len) for f in schema.multi),
               tuple(dense_offsets), tuple(bounds), off, padded)

  def global_ids(self, sparse: jax.Array, mv_ids: jax.Array, dense: jax.Array) -> jax.Array:
    """Per-field ids -> stacked-table row ids, [B, C] int32 (inside jit)."""
    cols = [sparse.astype(jnp.int32) + jnp.asarray(self.sparse_offsets, jnp.int32)] if self.sparse_offsets else []
    if self.mv_lens:
      mv_off = np.repeat(np.asarray(self.mv_offsets, np.int32), self.mv_lens)
      cols.append(mv_ids.astype(jnp.int32) + jnp.asarray(mv_off))
    if self.dense_offsets:
      buckets = [jnp.searchsorted(jnp.asarray(b, jnp.float32), dense[:, i], side="right").astype(jnp.int32)
                 for i, b in enumerate(self.dense_boundaries)]
      cols.append(jnp.stack(buckets, 1) + jnp.asarray(self.dense_offsets, jnp.int32))
    return jnp.concatenate(cols, axis=1)


@dataclasses.dataclass(frozen=True)
class Engine:
  """Single-device engine: plain gather for lookup, merge + row-wise optimizer for update."""

  layout: FeatureLayout
  dim: int
  table_names: tuple[str, ...]
  opt: opt_lib.SparseOptConfig
  init_std: float = 0.01
  param_dtype: Any = jnp.float32  # table storage dtype (bf16 option); slots stay f32

  def init(self, rng: jax.Array):
    """(tables, slots, scratch): tables ~ N(0, init_std²), a distinct stream per set (so the
    towers of ESMM-NS start apart); scratch is the all -1 row map of `merge_with_scratch`."""
    tables, slots = {}, {}
    for i, name in enumerate(self.table_names):
      k = jax.random.fold_in(rng, i)
      tables[name] = (self.init_std * jax.random.normal(k, (self.layout.padded_rows, self.dim), jnp.float32)
                      ).astype(self.param_dtype)
      slots[name] = opt_lib.init_slots(self.opt, self.layout.padded_rows, self.dim)
    return tables, slots, jnp.full((self.layout.padded_rows,), -1, jnp.int32)

  def lookup(self, tables: dict[str, jax.Array], gids: jax.Array) -> dict[str, jax.Array]:
    return {n: jnp.take(t, gids, axis=0) for n, t in tables.items()}

  def update(self, tables, slots, scratch, gids: jax.Array, grads: dict[str, jax.Array], step: jax.Array):
    """Row-wise update of the touched rows of every set -> (tables, slots, scratch)."""
    names = list(tables)
    flat = gids.reshape(-1)
    # The sets share ids: merge their gradients side by side in one pass, then split.
    g_all = jnp.concatenate([grads[n].reshape(flat.shape[0], -1) for n in names], axis=1)
    scratch, uids, g_all = opt_lib.merge_with_scratch(scratch, flat, g_all)
    new_t, new_s = {}, {}
    for i, n in enumerate(names):
      g = g_all[:, i * self.dim:(i + 1) * self.dim]
      new_t[n], new_s[n] = opt_lib.apply_rows(self.opt, tables[n], slots[n], uids, g, step)
    return new_t, new_s, scratch
