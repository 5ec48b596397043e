"""Pure step functions: `train_step(c, state, batch) -> (state, metrics)` and `predict_step`.

The embedding rows are looked up *outside* the gradient and differentiated as an input: the
gradient is [B, C, D] (what the batch touched), never [V, D] (docs/design.md, Embedding engine).
`dense_train_step` is the dense-autodiff reference used by tests: the same model and loss with the
gradient taken through the whole table and the same optimizer applied densely.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from esmjax.core.state import Components, TrainState
from esmjax.embedding import optimizers as opt_lib

BATCH_KEYS = ("sparse", "mv_ids", "mv_w", "dense", "labels")


def labels(c: Components, batch) -> dict[str, jax.Array]:
  """{label: float32 [B]}: each label the OR (max) of its columns of batch['labels']."""
  lab = batch["labels"].astype(jnp.float32)
  out = {}
  for name, cols in c.label_columns.items():
    v = lab[:, cols[0]]
    for i in cols[1:]:
      v = jnp.maximum(v, lab[:, i])
    out[name] = v
  return out


def _loss_fn(c: Components, params, emb, batch, rng, train: bool):
  z = c.model.apply(
    {"params": params},
    emb,
    batch["mv_w"],
    batch["dense"],
    train=train,
    rngs={"dropout": jax.random.fold_in(rng, 1)} if train else None,
  )
  loss, parts = c.model.loss(z, labels(c, batch), jax.random.fold_in(rng, 2))
  return loss, parts


def train_step(c: Components, state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
  rng = jax.random.fold_in(state.rng, state.step)
  gids = c.layout.global_ids(batch["sparse"], batch["mv_ids"], batch["dense"])
  emb = c.engine.lookup(state.tables, gids)
  grad_fn = jax.value_and_grad(
    lambda p, e: _loss_fn(c, p, e, batch, rng, True), argnums=(0, 1), has_aux=True
  )
  (loss, parts), (g_params, g_emb) = grad_fn(state.params, emb)
  updates, opt_state = c.tx.update(g_params, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  tables, slots, scratch = c.engine.update(
    state.tables, state.slots, state.scratch, gids, g_emb, state.step, rows=emb
  )
  metrics = {"loss": loss, **{f"loss/{k}": v for k, v in parts.items()}}
  return state.replace(
    step=state.step + 1,
    params=params,
    opt_state=opt_state,
    tables=tables,
    slots=slots,
    scratch=scratch,
  ), metrics


def predict_step(c: Components, state: TrainState, batch) -> dict[str, jax.Array]:
  """{pctr, pcvr, pctcvr[, pctavr]} for every row of the batch (no dropout)."""
  gids = c.layout.global_ids(batch["sparse"], batch["mv_ids"], batch["dense"])
  emb = c.engine.lookup(state.tables, gids)
  z = c.model.apply({"params": state.params}, emb, batch["mv_w"], batch["dense"], train=False)
  return c.model.probabilities(z)


def dense_train_step(c: Components, state: TrainState, batch):
  """Reference: autodiff through the whole [V, D] tables, then the dense optimizer (tests only)."""
  rng = jax.random.fold_in(state.rng, state.step)
  gids = c.layout.global_ids(batch["sparse"], batch["mv_ids"], batch["dense"])

  def loss_of_tables(params, tables):
    emb = {n: jnp.take(t, gids, axis=0) for n, t in tables.items()}
    return _loss_fn(c, params, emb, batch, rng, True)

  (loss, parts), (g_params, g_tables) = jax.value_and_grad(
    loss_of_tables, argnums=(0, 1), has_aux=True
  )(state.params, state.tables)
  updates, opt_state = c.tx.update(g_params, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  tables, slots = {}, {}
  for n, t in state.tables.items():
    touched = jnp.zeros((t.shape[0],), bool).at[gids.reshape(-1)].set(True)
    tables[n], slots[n] = opt_lib.dense_reference_update(
      c.engine.opt, t, state.slots[n], g_tables[n], state.step, touched
    )
  return state.replace(
    step=state.step + 1, params=params, opt_state=opt_state, tables=tables, slots=slots
  ), {"loss": loss}
