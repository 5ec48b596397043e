"""Train state as data, and the pieces a run is built from (model, engine, optimizers).

`build(config, schema)` turns a validated config and a dataset schema into a `Components` bundle
of static, hashable parts; everything that changes during training lives in `TrainState`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from esmjax.common import schema as schema_lib
from esmjax.config import compat
from esmjax.core import lr_scaling
from esmjax.embedding import engine as engine_lib
from esmjax.embedding import optimizers as opt_lib
from esmjax.embedding import sharded as sharded_lib
from esmjax.models import model as model_lib
from esmjax.models import registry

DTYPES = model_lib.DTYPES
TOWER_OPTIMIZERS = ("adam", "adamw", "adagrad", "sgd")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: steps taken
  params: Any  # tower (and dense-input) params: a Flax params tree
  opt_state: Any  # optax state of the towers
  tables: dict[str, jax.Array]  # embedding sets, [V, D] each
  slots: dict[str, dict[str, jax.Array]]  # row-wise optimizer slots per set
  scratch: jax.Array  # [V] int32, all -1 between steps: the engine's duplicate-merge row map
  rng: jax.Array  # base key; a step uses fold_in(rng, step)


@dataclasses.dataclass(frozen=True)
class Components:
  model: model_lib.Model  # the registered model: network, log-probabilities, loss
  engine: Any  # engine.Engine or a sharded engine with the same interface
  tx: optax.GradientTransformation
  layout: engine_lib.FeatureLayout
  schema: schema_lib.Schema
  label_columns: dict[str, tuple[int, ...]]  # label -> columns of batch['labels'] (their OR)

  @property
  def label_index(self) -> dict[str, int]:
    """Label name -> its column of batch['labels'], for labels read from one column."""
    return {name: cols[0] for name, cols in self.label_columns.items() if len(cols) == 1}


def tower_optimizer(
  cfg: ml_collections.ConfigDict, learning_rate: float | None = None
) -> optax.GradientTransformation:
  """The towers' optax optimizer; `learning_rate` overrides cfg.learning_rate (the batch-scaled
  rate, `esmjax.core.lr_scaling`)."""
  name = cfg.name
  lr = cfg.learning_rate if learning_rate is None else learning_rate
  if name == "adam":
    tx = optax.adam(lr)
  elif name == "adamw":
    tx = optax.adamw(lr, weight_decay=cfg.weight_decay)
  elif name == "adagrad":
    tx = optax.adagrad(lr)
  elif name == "sgd":
    tx = optax.sgd(lr)
  else:
    raise ValueError(
      f"optimizer.name={name!r} is not a tower optimizer; allowed: {list(TOWER_OPTIMIZERS)}"
    )
  if cfg.get("grad_clip", 0.0):
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


EMBEDDING_SHARDINGS = ("auto", "replicated", "row")  # values of embedding.sharding


def engine_factory_for(config: ml_collections.ConfigDict, mesh=None):
  """The engine class that `embedding.sharding` asks for on this mesh (a callable taking the
  `Engine` fields): 'replicated' keeps whole tables on every device; 'row' shards their rows over
  mesh axis `mesh.axis` (`esmjax.embedding.sharded`); 'auto' is 'row' when that axis has more
  than one device. Without a mesh (tests, tools that build components alone) only the replicated
  engine can be built."""
  mode = compat.get(config, "embedding.sharding")
  if mode not in EMBEDDING_SHARDINGS:
    raise ValueError(
      f"embedding.sharding={mode!r} is not allowed; allowed: {list(EMBEDDING_SHARDINGS)}"
    )
  if mesh is None:
    if mode == "row":
      raise ValueError("embedding.sharding='row' needs the run's mesh: pass mesh= to state.build")
    return engine_lib.Engine
  axis = config.mesh.axis
  if mode == "replicated" or (mode == "auto" and mesh.shape[axis] == 1):
    return engine_lib.Engine
  return functools.partial(sharded_lib.ShardedEngine, mesh=mesh, axis=axis)


def build(
  config: ml_collections.ConfigDict,
  schema: schema_lib.Schema,
  *,
  row_multiple: int = 1,
  engine_factory=None,
  mesh=None,
) -> Components:
  """Components for `config` on `schema`. `mesh` (the run's) lets `embedding.sharding` pick the
  row-sharded engine; `row_multiple` pads the table rows to split evenly over it."""
  model = registry.build(config.model, schema)
  try:
    label_columns = model.label_columns(tuple(schema.labels))
  except ValueError as e:  # a label the model needs is missing from the data: the user's data
    raise schema_lib.DatasetError(str(e)) from None
  layout = engine_lib.FeatureLayout.from_schema(
    schema, bucketise_dense=config.model.dense_mode == "bucket", row_multiple=row_multiple
  )
  make = engine_factory or engine_factory_for(config, mesh)
  tower_lr, table_lr = lr_scaling.learning_rates(config)
  if lr_scaling.factor(config) != 1.0:
    logging.info("%s", lr_scaling.describe(config))
  table_section = dict(config.embedding)
  if "learning_rate" in table_section:
    table_section["learning_rate"] = table_lr
  engine = make(
    layout=layout,
    dim=config.model.embed_dim,
    table_names=model.table_sets,
    opt=opt_lib.from_config(table_section),
    init_std=config.embedding.init_std,
    param_dtype=DTYPES[config.embedding.dtype],
  )
  tx = tower_optimizer(config.optimizer, tower_lr)
  return Components(model, engine, tx, layout, schema, label_columns)


def dummy_batch(c: Components, batch_size: int) -> dict[str, jax.Array]:
  s = c.schema
  return {
    "sparse": jnp.zeros((batch_size, len(s.sparse)), jnp.int32),
    "mv_ids": jnp.zeros((batch_size, s.mv_total_len), jnp.int32),
    "mv_w": jnp.zeros((batch_size, s.mv_total_len), jnp.float32),
    "dense": jnp.zeros((batch_size, len(s.dense)), jnp.float32),
    "labels": jnp.zeros((batch_size, len(s.labels)), jnp.uint8),
  }


def init_state(c: Components, seed: int) -> TrainState:
  """Pure init (call under jit with out_shardings so nothing materialises unsharded)."""
  rng = jax.random.PRNGKey(seed)
  k_params, k_tables, k_state = jax.random.split(rng, 3)
  tables, slots, scratch = c.engine.init(k_tables)
  b = dummy_batch(c, 2)
  gids = c.layout.global_ids(b["sparse"], b["mv_ids"], b["dense"])
  emb = {n: jnp.zeros(gids.shape + (c.engine.dim,), jnp.float32) for n in tables}
  params = c.model.init(k_params, emb, b["mv_w"], b["dense"])["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=c.tx.init(params),
    tables=tables,
    slots=slots,
    scratch=scratch,
    rng=k_state,
  )


def state_fingerprint(state: TrainState) -> str:
  """A hash of every array of the state (host copy), to compare runs bit for bit."""
  import hashlib

  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    arr = np.asarray(
      jax.device_get(
        jax.random.key_data(leaf)
        if jnp.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key)
        else leaf
      )
    )
    h.update(arr.tobytes())
  return h.hexdigest()[:16]
