"""Mesh, shardings, and moving batches between the host and the devices (one or several
processes)."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int = -1, axis: str = DATA_AXIS) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all if -1), with Auto axis types on purpose:
  jit + NamedSharding propagate shardings and shard_map regions make their collectives explicit."""
  devices = jax.devices()
  if num_devices > 0:
    if num_devices > len(devices):
      raise ValueError(
        f"mesh.num_devices={num_devices} but only {len(devices)} device(s) are visible"
      )
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(mesh.axis_names[0]))


def state_shardings(state_shape, mesh: Mesh, shard_tables: bool):
  """Everything replicated, except embedding tables and their slots: rows over the mesh axis."""
  rep = replicated(mesh)
  rows = NamedSharding(mesh, P(mesh.axis_names[0])) if shard_tables else rep

  def for_leaf(path, leaf):
    top = getattr(path[0], "name", None)
    if top in ("tables", "slots", "scratch") and getattr(leaf, "ndim", 0) >= 1:
      return rows
    return rep

  return jax.tree_util.tree_map_with_path(for_leaf, state_shape)


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """[k, B, ...]: k batches, each sharded by rows (axis 1) over the mesh."""
  return NamedSharding(mesh, P(None, mesh.axis_names[0]))


def put_batch(
  batch: dict[str, np.ndarray], mesh: Mesh, stacked: bool = False
) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded by rows over the mesh (`stacked`: arrays of
  [k, rows, ...], k batches, rows on axis 1)."""
  s = stacked_batch_sharding(mesh) if stacked else batch_sharding(mesh)
  if jax.process_count() == 1:  # the local rows are all the rows: one transfer call for all arrays
    return jax.device_put(dict(batch), s)
  return {k: jax.make_array_from_process_local_data(s, np.asarray(v)) for k, v in batch.items()}


def to_host_local(tree, mesh: Mesh):
  """Global row-sharded arrays -> this process's rows as NumPy (inverse of put_batch)."""
  del mesh

  def local(x):
    if jax.process_count() == 1:
      return np.asarray(x)
    shards = {}
    for s in x.addressable_shards:
      start = s.index[0].start or 0 if s.index else 0
      shards.setdefault(start, np.asarray(s.data))
    return np.concatenate([shards[k] for k in sorted(shards)])

  return jax.tree_util.tree_map(local, tree)


def gather_host_columns(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Concatenates every process's host columns (rows may differ per process), on every process."""
  if jax.process_count() == 1:
    return cols
  n = next(iter(cols.values())).shape[0]
  counts = np.asarray(multihost_utils.process_allgather(np.asarray([n], np.int64))).reshape(-1)
  m = int(counts.max())
  padded = {
    k: np.concatenate([v, np.zeros((m - n,) + v.shape[1:], v.dtype)]) for k, v in cols.items()
  }
  allg = multihost_utils.process_allgather(padded)  # [P, m, ...]
  return {
    k: np.concatenate([np.asarray(v)[p, : counts[p]] for p in range(len(counts))])
    for k, v in allg.items()
  }
