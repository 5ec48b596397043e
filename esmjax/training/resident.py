"""Device-resident training data (`data.input_mode`): the rows live on the devices, and each step's
batch is gathered inside the jitted dispatch loop, so no host work sits between steps.

Layout: the model's columns (`steps.BATCH_KEYS`) of the used blocks (the leading
`data.train_fraction`, as the stream reads) go to the devices once, row-sharded over the mesh
axis: each process loads the blocks `[process_index::process_count]`, splits its rows evenly over
its devices, and every device keeps the same number m of rows (the global minimum; the few rows
past it, fewer than the device count in one process, are left out for the whole run and logged).

Order: device d reads its m rows as an endless sequence of epochs; epoch e is the permutation
`permute(seed, e, d, m)` of its rows (a keyed Feistel cipher over [0, m) with cycle walking: a
pure function of seed, epoch and device, computed per batch position, never stored). Step s takes
positions [s·b, (s + 1)·b) of that sequence (b = batch / devices rows per device), so a batch may
span two epochs, as the stream's batches do. Within each epoch every resident row is read exactly
once (tests/test_resident.py checks it). The position is a function of the step alone: the
checkpoint's step is the data position, which makes resumption exact.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from esmjax.core import sharding as sh
from esmjax.core import steps
from esmjax.data.format import dataset as ds_lib

DATA_TAG = 0x0DA7A5EED % 2**31  # folded into the seed's key: the order is independent of the init
ROUNDS = 6  # Feistel rounds of the per-epoch permutation


# -- the permutation ------------------------------------------------------------------------------


def _half_bits(m: int) -> int:
  """Bits of each Feistel half: the cipher's domain 4**half is the smallest >= m (at least 4)."""
  return max(1, math.ceil(math.log2(max(m, 2)) / 2))


def round_keys(seed: int, epoch, device) -> jax.Array:
  """uint32 [ROUNDS]: the cipher's keys for (seed, epoch, device); traceable in epoch and device."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), DATA_TAG), device)
  return jax.random.bits(jax.random.fold_in(key, epoch), (ROUNDS,), jnp.uint32)


def _mix(x: jax.Array, k: jax.Array, mask: int) -> jax.Array:
  """The round function: a 32-bit avalanche hash of (x xor key), cut to the half's bits."""
  x = (x ^ k) * jnp.uint32(0x9E3779B1)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x85EBCA77)
  x = x ^ (x >> 13)
  return x & jnp.uint32(mask)


def _encrypt(x: jax.Array, keys: jax.Array, half: int) -> jax.Array:
  """A balanced Feistel network on 2·half-bit values: a bijection of [0, 4**half)."""
  mask = (1 << half) - 1
  left, right = x >> half, x & jnp.uint32(mask)
  for r in range(ROUNDS):
    left, right = right, left ^ _mix(right, keys[..., r], mask)
  return (left << half) | right


def permute(idx: jax.Array, m: int, keys: jax.Array) -> jax.Array:
  """The permutation of [0, m) keyed by `keys` (uint32 [..., ROUNDS], broadcast against idx) at
  positions `idx` (int, in [0, m)): encrypt, and re-encrypt what falls outside [0, m) (cycle
  walking; the domain is < 4m, so a walk is short)."""
  half = _half_bits(m)
  x = _encrypt(idx.astype(jnp.uint32), keys, half)
  x = jax.lax.while_loop(
    lambda x: jnp.any(x >= m), lambda x: jnp.where(x >= m, _encrypt(x, keys, half), x), x
  )
  return x.astype(jnp.int32)


def epoch_order(seed: int, epoch: int, device: int, m: int) -> np.ndarray:
  """Device `device`'s rows in the order of epoch `epoch` (for tests and inspection)."""
  keys = round_keys(seed, epoch, device)
  return np.asarray(jax.jit(permute, static_argnums=1)(jnp.arange(m), m, keys))


# -- the position ---------------------------------------------------------------------------------


def position(step: int, rows_per_step: int, m: int) -> tuple[int, int]:
  """(epoch, offset) of step `step`'s first row on each device (exact: Python integers)."""
  return divmod(int(step) * int(rows_per_step), int(m))


def local_steps(data, epoch, offset, *, seed: int, b: int, m: int, k: int, axis: str):
  """This device's rows of the k steps from (epoch, offset), [k, b, ...]: inside shard_map over
  `axis`. Position j of the run is row permute(q mod m) of epoch `epoch + q // m` (q = offset + j),
  so the k batches may span several epochs, exactly as k single steps with `position_after` between
  them read them. One permutation pass and one gather per dispatch instead of per step: on a GPU the
  per-step pass (its cycle-walking loop, the round keys, the small gather) cost more than the
  gather of the rows themselves at batch 1,024 (benchmarks/results/gpu/resident_feed.md)."""
  device = jax.lax.axis_index(axis)
  q = offset + jnp.arange(k * b, dtype=jnp.int32)
  ahead = q // m  # epochs past `epoch`, < spans
  spans = (k * b - 1) // m + 2  # offset < m, so q < m + k·b
  keys = jax.vmap(lambda e: round_keys(seed, epoch + e, device))(jnp.arange(spans))
  rows = permute(q - ahead * m, m, keys[ahead])
  return {
    key: jnp.take(v, rows, axis=0, mode="clip").reshape((k, b) + v.shape[1:])
    for key, v in data.items()
  }


def position_after(pos: tuple[jax.Array, jax.Array], rows: jax.Array, m: int):
  """The position `rows` rows (per device) after `pos`: one step later with rows = b."""
  epoch, offset = pos
  q = offset + rows
  return epoch + (q // m).astype(epoch.dtype), q % m


# -- the resident columns -------------------------------------------------------------------------

# The model's columns are kept as one int32 matrix, a row per example: one gather of contiguous
# rows per step instead of one per column (3x the rows/s on CPU, benchmarks/resident_feed.py).
# 4-byte columns are stored bit for bit (floats bitcast), narrower integers widened.


def pack(cols: dict[str, np.ndarray]) -> tuple[np.ndarray, tuple]:
  """(int32 [n, W]: the columns side by side, the layout `unpack` reads them back with)."""
  parts, layout, start = [], [], 0
  for k, v in cols.items():
    v = v.reshape(len(v), -1)
    if v.dtype.itemsize == 4:
      part = v.view(np.int32)
    elif v.dtype.kind in "iub" and v.dtype.itemsize < 4:
      part = v.astype(np.int32)
    else:
      raise TypeError(f"resident column {k!r} has dtype {v.dtype}; 4-byte or narrower ints only")
    parts.append(part)
    layout.append((k, v.dtype.str, start, part.shape[1]))
    start += part.shape[1]
  return np.ascontiguousarray(np.concatenate(parts, axis=1)), tuple(layout)


def unpack(rows, layout) -> dict[str, jax.Array]:
  """The columns of `pack`'s matrix (traceable; leading axes kept, e.g. [k, b, W] -> [k, b, w])."""
  out = {}
  for k, dtype, start, width in layout:
    part = rows[..., start : start + width]
    dtype = np.dtype(dtype)
    if dtype.itemsize == 4:
      out[k] = jax.lax.bitcast_convert_type(part, dtype)
    else:
      out[k] = part.astype(dtype)
  return out


def used_blocks(dataset: ds_lib.Dataset, fraction: float) -> int:
  """The blocks the stream reads at `data.train_fraction` (`block_order.block_order`'s count)."""
  n = dataset.num_blocks
  return max(1, int(round(n * fraction))) if fraction < 1.0 else n


def row_bytes(dataset: ds_lib.Dataset) -> int:
  """Bytes of one row's model columns on the devices."""
  block = ds_lib.empty_block(dataset.schema, 1)
  return sum(block[k].dtype.itemsize * int(np.prod(block[k].shape[1:])) for k in steps.BATCH_KEYS)


def resident_bytes(dataset: ds_lib.Dataset, fraction: float) -> int:
  """The columns' bytes on all devices together (the used blocks' rows)."""
  sizes = [int(n) for s in dataset.manifest["shards"] for n in s["block_sizes"]]
  return sum(sizes[: used_blocks(dataset, fraction)]) * row_bytes(dataset)


def load_local(
  dataset: ds_lib.Dataset, fraction: float, process_index: int, process_count: int
) -> dict[str, np.ndarray]:
  """This process's rows (blocks [process_index::process_count] of the used blocks), every block
  verified against its checksum as the stream verifies it."""
  src = ds_lib.BlockSource(dataset)
  mine = range(process_index, used_blocks(dataset, fraction), process_count)
  blocks = [src.read(i) for i in mine]
  if not blocks:
    raise ds_lib.DatasetError(
      f"{dataset.directory}: {dataset.num_blocks} block(s) cannot feed {process_count} processes"
    )
  return {k: np.concatenate([b[k] for b in blocks]) for k in steps.BATCH_KEYS}


class ResidentData:
  """The training rows on the devices: `columns` ({'rows': int32 [D·m, W]}, `pack`ed by `layout`,
  row-sharded), `m` rows per device, `b` rows per device per step, `dropped` rows left out (all
  processes)."""

  def __init__(self, dataset: ds_lib.Dataset, config, mesh):
    pc, pi = jax.process_count(), jax.process_index()
    local = load_local(dataset, float(config.data.train_fraction), pi, pc)
    n_local = len(local["labels"])
    local_devices = mesh.local_mesh.size if pc > 1 else mesh.size
    m = n_local // local_devices
    if pc > 1:
      from jax.experimental import multihost_utils

      m = int(np.min(multihost_utils.process_allgather(np.asarray([m], np.int64))))
    self.m = m
    self.b = int(config.train.batch_size) // mesh.size
    if m < self.b:
      from esmjax.config import defaults as config_lib

      raise config_lib.ConfigError(
        f"data.input_mode='device' needs at least train.batch_size / devices = {self.b} rows per "
        f"device; {dataset.directory} gives {m} (use data.input_mode='stream')"
      )
    used = resident_bytes(dataset, float(config.data.train_fraction)) // row_bytes(dataset)
    self.rows = m * mesh.size
    self.dropped = used - self.rows
    self.seed = int(config.train.seed)
    self.axis = mesh.axis_names[0]
    # Device j of this process gets local rows [j·m, (j + 1)·m): contiguous runs of blocks.
    rows, self.layout = pack({k: v[: m * local_devices] for k, v in local.items()})
    del local
    self.columns = sh.put_batch({"rows": rows}, mesh)
    self.nbytes = sum(int(v.size) * v.dtype.itemsize for v in self.columns.values())

  def gather_fn(self, mesh, unpacked: bool = False, steps: int | None = None):
    """(columns, epoch, offset) -> the step's rows of every column, row-sharded (traceable);
    `steps`: the rows of that many steps from there, [steps, batch, ...] (sharded on the batch
    axis); `unpacked`: of the packed `columns`, as the model's batch."""
    k = 1 if steps is None else int(steps)
    fn = functools.partial(local_steps, seed=self.seed, b=self.b, m=self.m, k=k, axis=self.axis)
    if unpacked:
      gather, layout = fn, self.layout
      fn = lambda data, epoch, offset: unpack(gather(data, epoch, offset)["rows"], layout)  # noqa: E731
    if steps is None:
      many = fn
      fn = lambda data, epoch, offset: {key: v[0] for key, v in many(data, epoch, offset).items()}  # noqa: E731
    spec = P(self.axis) if steps is None else P(None, self.axis)
    return jax.shard_map(
      fn, mesh=mesh, in_specs=(P(self.axis), P(), P()), out_specs=spec, check_vma=False
    )

  def start_position(self, step: int) -> tuple[np.int32, np.int32]:
    epoch, offset = position(step, self.b, self.m)
    if epoch >= 2**31 - 1:
      raise OverflowError(f"step {step} is past the resident order's {2**31 - 1} epochs")
    return np.int32(epoch), np.int32(offset)


# -- the dispatch program -------------------------------------------------------------------------


def program(c, names, capacity: int, gather, b: int, m: int):
  """(state, columns, (epoch, offset), guard, n) -> (state, metrics stacked [capacity], guard,
  position): n <= capacity guarded steps on the rows of (at least) `capacity` steps that `gather`
  (a `gather_fn(..., steps=...)`) takes from the position, all at once before the loop."""
  from esmjax.training import dispatch as dispatch_lib

  def run(state, columns, pos, guard, n):
    rows = gather(columns, *pos)
    first = {k: v[0] for k, v in rows.items()}
    shapes = jax.eval_shape(lambda s, bt: steps.train_step(c, s, bt)[1], state, first)
    stacked = {k: jnp.zeros((capacity,) + v.shape, v.dtype) for k, v in shapes.items()}

    def body(i, carry):
      state, guard, stacked = carry
      batch = {k: v[i] for k, v in rows.items()}
      state, metrics, guard = dispatch_lib.guarded_step(c, names, state, batch, guard)
      stacked = {k: v.at[i].set(metrics[k]) for k, v in stacked.items()}
      return state, guard, stacked

    state, guard, stacked = jax.lax.fori_loop(0, n, body, (state, guard, stacked))
    return state, stacked, guard, position_after(pos, n * b, m)

  return run


class ResidentDispatcher:
  """Runs n <= k guarded steps on batches gathered from the resident columns, in one program; the
  position (epoch, offset) stays on the devices between dispatches. `compile()` ahead of the loop;
  `start(step)` sets the position of the step the run starts from."""

  def __init__(self, run, data: ResidentData, capacity: int):
    self._run, self.data, self.capacity = run, data, int(capacity)
    self._compiled = None
    self._counts: dict[int, jax.Array] = {}
    self._pos = None

  def jitted(self):
    run, rep = self._run, self._run.replicated
    fn = program(
      run.components,
      run.loss_names,
      self.capacity,
      # Rows of at least 2 steps: a [1, b] stack is folded away and XLA:CPU then fuses the step
      # differently (f32 roundoff changes), and steps_per_dispatch must change no result.
      self.data.gather_fn(run.mesh, unpacked=True, steps=max(2, self.capacity)),
      self.data.b,
      self.data.m,
    )
    rows = sh.batch_sharding(run.mesh)
    return jax.jit(
      fn,
      in_shardings=(run.state_sharding, rows, rep, rep, rep),
      out_shardings=(run.state_sharding, rep, rep, rep),
      donate_argnums=(0,),
    )

  def abstract_args(self):
    run, rep = self._run, self._run.replicated
    rows = sh.batch_sharding(run.mesh)
    cols = {
      k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rows) for k, v in self.data.columns.items()
    }
    i32 = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    guard = (i32, jax.ShapeDtypeStruct((len(run.loss_names),), jnp.bool_, sharding=rep))
    return (run.abstract_state(), cols, (i32, i32), guard, i32)

  def compile(self) -> None:
    if self._compiled is None:
      self._compiled = self.jitted().trace(*self.abstract_args()).lower().compile()

  def start(self, step: int) -> None:
    self._pos = jax.device_put(self.data.start_position(step), self._run.replicated)

  def __call__(self, state, n: int, guard):
    """-> (state, metrics stacked [k]: the first n are these steps', guard)."""
    self.compile()
    if n not in self._counts:
      self._counts[n] = jax.device_put(np.int32(n), self._run.replicated)
    state, metrics, guard, self._pos = self._compiled(
      state, self.data.columns, self._pos, guard, self._counts[n]
    )
    return state, metrics, guard
