"""The row-sharded embedding engine: tables P(axis, None) over the mesh, collectives in shard_map.

Device k of n owns rows [k·V/n, (k+1)·V/n) of every table, of its optimizer slots and of the
duplicate-merge scratch, so a device holds 1/n of the embedding state and nothing ever builds a
whole table on one device (torchrec's row-wise sharding; docs/design.md, Embedding engine). The
batch is sharded over the same axis. One step:

  lookup   all_gather ids [B/n, C] -> [B, C]; each device reads the rows it owns (the others read
           as 0); psum_scatter sums the n partial [B, C, D] buffers and hands each device the rows
           of its own batch shard. Exactly one device contributes each row, so the sum is exact
           and the rows equal a single-device gather bit for bit (f32 and bf16 alike).
  update   all_gather ids and row gradients; each device merges the duplicates among the ids it
           owns with its own scratch and applies the row-wise optimizer to its rows only.

Only ids, looked-up rows and row gradients cross devices — O(batch), never O(table);
tests/test_sharded.py checks the compiled step for that. The cost: each device merges all B·C ids
of the global batch (most are skipped), where an all-to-all by owner would send each id once;
with one host's worth of devices the gather is the simpler and, at these sizes, the cheaper one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from esmjax.embedding import engine as engine_lib
from esmjax.embedding import merge
from esmjax.embedding import optimizers as opt_lib


@dataclasses.dataclass(frozen=True)
class ShardedEngine:
  """Row-sharded engine with `engine.Engine`'s interface (init, lookup, update)."""

  layout: engine_lib.FeatureLayout
  dim: int
  table_names: tuple[str, ...]
  opt: opt_lib.SparseOptimizer
  mesh: Mesh
  axis: str = "data"
  init_std: float = 0.01
  param_dtype: Any = jnp.float32  # table storage dtype (bf16 option); slots stay f32

  row_sharded = True  # Run shards tables, slots and scratch with P(axis, None)

  def __post_init__(self):
    n = self.mesh.shape[self.axis]
    if self.layout.padded_rows % n:
      raise ValueError(
        f"{self.layout.padded_rows} table rows do not split over the {n} devices of mesh "
        f"axis {self.axis!r}: build the layout with row_multiple={n}"
      )

  @property
  def rows_per_device(self) -> int:
    return self.layout.padded_rows // self.mesh.shape[self.axis]

  def _map(self, f, in_specs, out_specs):
    return jax.shard_map(f, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs)

  def _local_ids(self, ids: jax.Array) -> jax.Array:
    """Global row ids -> this device's local rows; rows owned elsewhere fall outside [0, V/n)."""
    return ids - jax.lax.axis_index(self.axis) * self.rows_per_device

  def init(self, rng: jax.Array):
    """Like `Engine.init`, but each device draws only its rows (same values as on one device)."""
    vs, rows = self.rows_per_device, P(self.axis)

    def local(key):
      first = jax.lax.axis_index(self.axis) * vs
      tables = {
        name: engine_lib.init_rows(
          jax.random.fold_in(key, i), first, vs, self.dim, self.init_std, self.param_dtype
        )
        for i, name in enumerate(self.table_names)
      }
      slots = {name: self.opt.init_slots(vs, self.dim) for name in self.table_names}
      return tables, slots, jnp.full((vs,), -1, jnp.int32)

    return self._map(local, P(), rows)(rng)

  def lookup(self, tables: dict[str, jax.Array], gids: jax.Array) -> dict[str, jax.Array]:
    """{set: rows [B, C, D]} sharded like the batch. Ids outside the table read 0 (no device owns
    them)."""
    ax = self.axis

    def local(table_shards, ids):
      loc = self._local_ids(jax.lax.all_gather(ids, ax, tiled=True))
      return {
        n: jax.lax.psum_scatter(merge.gather_rows(t, loc), ax, scatter_dimension=0, tiled=True)
        for n, t in table_shards.items()
      }

    return self._map(local, (P(ax), P(ax)), P(ax))(tables, gids)

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
    """Row-wise update of the rows each device owns -> (tables, slots, scratch), all row-sharded.

    `rows` (the looked-up rows) is accepted for interface parity and not used: they live on the
    batch shards, and re-reading its own rows is cheaper for a device than gathering them.
    """
    del rows
    ax = self.axis
    # Distinct ids of the global batch bound those a device owns. Not capped at the device's rows:
    # a buffer of them would be O(table) work per step wherever the bound exceeds them.
    cap = self.layout.max_unique(gids.shape[0])

    def local(table_shards, slot_shards, scratch_shard, ids, batch_grads, step):
      ids = self._local_ids(jax.lax.all_gather(ids, ax, tiled=True).reshape(-1))
      grads = {n: jax.lax.all_gather(g, ax, tiled=True) for n, g in batch_grads.items()}
      return engine_lib.merged_update(
        self.opt, self.dim, table_shards, slot_shards, scratch_shard, ids, grads, step, capacity=cap
      )

    return self._map(local, (P(ax), P(ax), P(ax), P(ax), P(ax), P()), (P(ax), P(ax), P(ax)))(
      tables, slots, scratch, gids, grads, step
    )
