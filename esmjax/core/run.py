"""`Run`: what a run is built from, before any data moves.

mesh → components (`state.build`) → state shapes (`eval_shape`) → shardings →
`jit(init, out_shardings)`, and the jitted train / predict steps over those shardings.
"""

from __future__ import annotations

import functools

import jax
import ml_collections

from esmjax.common.schema import Schema
from esmjax.config import defaults as config_lib
from esmjax.core import host_memory, steps
from esmjax.core import sharding as sh
from esmjax.core import state as state_lib


def check_device_count(config: ml_collections.ConfigDict) -> None:
  """mesh.num_devices against the visible devices, and the batch split, before anything is built."""
  n, visible = int(config.mesh.num_devices), jax.device_count()
  if n > visible:
    raise config_lib.ConfigError(
      f"mesh.num_devices={n} but only {visible} device(s) are visible (on CPU, set "
      f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting)"
    )
  config_lib.check_devices(config, n if n > 0 else visible, jax.process_count())


class Run:
  """Everything a run is built from: mesh, components, state shapes and shardings, jitted functions.

  `components` (state.Components), `state_shape` / `state_sharding` (trees like TrainState),
  `init_fn()` -> a sharded initial state, `train_step(state, batch)` -> (state, metrics) with the
  state donated, `predict_step(state, batch)` -> probabilities, `evaluate(state, dataset)`.
  """

  def __init__(
    self, config: ml_collections.ConfigDict, schema: Schema, mesh=None, engine_factory=None
  ):
    host_memory.tune_host_allocator()  # before the state and the first step allocate
    self.config = config
    if mesh is None:
      mesh = sh.make_mesh(config.mesh.num_devices, config.mesh.axis)
    self.mesh = mesh
    config_lib.check_devices(config, self.mesh.size, jax.process_count())
    self.schema = schema
    self.components = state_lib.build(
      config, schema, row_multiple=self.mesh.size, engine_factory=engine_factory, mesh=self.mesh
    )
    init = functools.partial(state_lib.init_state, self.components, config.train.seed)
    self.state_shape = jax.eval_shape(init)
    shard_tables = bool(getattr(self.components.engine, "row_sharded", False))
    self.state_sharding = sh.state_shardings(self.state_shape, self.mesh, shard_tables)
    self.replicated = sh.replicated(self.mesh)
    self.init_fn = jax.jit(init, out_shardings=self.state_sharding)
    rows = sh.batch_sharding(self.mesh)
    self.train_step = jax.jit(
      functools.partial(steps.train_step, self.components),
      in_shardings=(self.state_sharding, rows),
      out_shardings=(self.state_sharding, self.replicated),
      donate_argnums=0,
    )
    self.predict_step = jax.jit(
      functools.partial(steps.predict_step, self.components),
      in_shardings=(self.state_sharding, rows),
      out_shardings=rows,
    )

  def abstract_batch(self, batch_size: int, stacked: int = 0) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes and shardings of a global batch of `batch_size` rows (`stacked` > 0: of that many
    batches, stacked on a leading axis)."""
    shapes = jax.eval_shape(functools.partial(state_lib.dummy_batch, self.components, batch_size))
    if not stacked:
      sharding = sh.batch_sharding(self.mesh)
      return {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in shapes.items()
      }
    sharding = sh.stacked_batch_sharding(self.mesh)
    return {
      k: jax.ShapeDtypeStruct((stacked,) + v.shape, v.dtype, sharding=sharding)
      for k, v in shapes.items()
    }

  def abstract_state(self):
    """The state's shapes with this run's shardings (for lowering without a state)."""
    return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      self.state_shape,
      self.state_sharding,
    )

  @functools.cached_property
  def loss_names(self) -> tuple[str, ...]:
    """The train metrics' names (`loss`, `loss/ctr`, `loss/ctcvr`, ...), sorted."""
    batch = self.abstract_batch(self.config.train.batch_size)
    step = functools.partial(steps.train_step, self.components)
    _, m = jax.eval_shape(step, self.state_shape, batch)
    return tuple(sorted(m))
