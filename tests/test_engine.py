"""The sparse engine equals the dense-autodiff reference on a tiny table, for every optimizer."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from esmjax.config import defaults as config_lib
from esmjax.core import state as state_lib
from esmjax.core import steps
from esmjax.embedding import engine as engine_lib
from esmjax.embedding import merge
from esmjax.embedding import optimizers as opt_lib


def _batch(schema, n=64, seed=0):
  b = tiny.random_block(schema, n, seed)
  return {k: jnp.asarray(b[k]) for k in steps.BATCH_KEYS}


@pytest.mark.parametrize("model", ["esmm", "esmm_ns", "esm2"])
@pytest.mark.parametrize("opt", ["sgd", "adagrad", "rowwise_adagrad", "lazy_adam", "ftrl"])
def test_sparse_step_equals_dense_reference(model, opt):
  cfg = tiny.tiny_config(model)
  cfg.embedding.optimizer = opt
  cfg.embedding.learning_rate = 0.1
  cfg.model.dense_mode = "bucket"
  schema = tiny.tiny_schema()
  c = state_lib.build(cfg, schema)
  s0 = state_lib.init_state(c, 0)
  sparse = jax.jit(functools.partial(steps.train_step, c))
  dense = jax.jit(functools.partial(steps.dense_train_step, c))
  a, b = s0, s0
  for i in range(3):  # repeated ids inside and across batches exercise the merge and the slots
    batch = _batch(schema, seed=i)
    a, ma = sparse(a, batch)
    b, mb = dense(b, batch)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
  for n in a.tables:
    np.testing.assert_allclose(a.tables[n], b.tables[n], rtol=2e-5, atol=1e-7)
    for k in a.slots[n]:
      np.testing.assert_allclose(a.slots[n][k], b.slots[n][k], rtol=2e-5, atol=1e-7)
  assert int(a.step) == 3
  # The update touched rows: tables moved from init.
  assert not np.allclose(a.tables[next(iter(a.tables))], s0.tables[next(iter(s0.tables))])


def test_merge_duplicates_sums_equal_ids():
  ids = jnp.asarray([5, 2, 5, 7, 2, 5], jnp.int32)
  g = jnp.arange(12, dtype=jnp.float32).reshape(6, 2)
  uids, gs = merge.merge_duplicates(ids, g, num_rows=10)
  assert list(np.asarray(uids)) == [2, 5, 7, 10, 10, 10]
  np.testing.assert_allclose(gs[:3], [[2 + 8, 3 + 9], [0 + 4 + 10, 1 + 5 + 11], [6, 7]])
  np.testing.assert_allclose(gs[3:], 0)


def test_scratch_merge_equals_sort_merge_and_resets():
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.zipf(1.3, 5000) % 300, jnp.int32)
  g = jnp.asarray(rng.normal(size=(5000, 3)), jnp.float32)
  u1, g1 = merge.merge_duplicates(ids, g, 300)
  scratch, u2, g2 = jax.jit(merge.merge_with_scratch)(jnp.full((300,), -1, jnp.int32), ids, g)
  a = {int(u): np.asarray(g1[i]) for i, u in enumerate(np.asarray(u1)) if u < 300}
  b = {int(u): np.asarray(g2[i]) for i, u in enumerate(np.asarray(u2)) if u < 300}
  assert a.keys() == b.keys() == set(np.asarray(ids).tolist())
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(scratch) == -1)  # reset: ready for the next step


def test_rowwise_adagrad_hand_computed():
  cfg = opt_lib.RowwiseAdagrad(learning_rate=0.5, eps=0.0)
  table = jnp.ones((4, 2))
  slots = cfg.init_slots(4, 2)
  uids = jnp.asarray([1, 4], jnp.int32)  # 4 is out of range: dropped
  g = jnp.asarray([[3.0, 4.0], [9.0, 9.0]])
  t, s = opt_lib.apply_rows(cfg, table, slots, uids, g, jnp.int32(0))
  # acc = mean(9, 16) = 12.5; w = 1 - 0.5·g/√12.5
  np.testing.assert_allclose(t[1], 1 - 0.5 * np.array([3.0, 4.0]) / np.sqrt(12.5), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(t)[[0, 2, 3]], 1.0)
  np.testing.assert_allclose(s["acc"], [0, 12.5, 0, 0])


def test_unknown_optimizer_names_allowed_values():
  with pytest.raises(ValueError, match=r"embedding.optimizer='adam'.*rowwise_adagrad"):
    opt_lib.get("adam")


@pytest.mark.parametrize("name", opt_lib.names())
def test_every_optimizer_hyperparameter_is_reached_from_the_config(name):
  """Each field of each optimizer is read from config.embedding by name (ftrl_beta included)."""
  cfg = tiny.tiny_config("esmm")
  cfg.embedding.optimizer = name
  fields = [f.name for f in dataclasses.fields(opt_lib.get(name))]
  for i, key in enumerate(fields):
    cfg.embedding[key] = 0.5 + 0.01 * i  # valid for every range (rates, betas, eps, l1/l2, ...)
  c = state_lib.build(config_lib.validate(cfg), tiny.tiny_schema())
  assert type(c.engine.opt) is opt_lib.get(name)
  want = {k: 0.5 + 0.01 * i for i, k in enumerate(fields)}
  assert {k: getattr(c.engine.opt, k) for k in fields} == want
  assert "ftrl_beta" in fields or name != "ftrl"


def test_ftrl_beta_changes_the_step_as_hand_computed():
  # One row, one step from w = 0, z = n = 0: n' = g², σ = |g|/lr, z' = g; w' = -(z' - sign·l1) /
  # ((β + |g|)/lr + l2).
  g = jnp.asarray([[2.0, -4.0]])
  for beta in (1.0, 3.0):
    opt = opt_lib.make("ftrl", learning_rate=0.5, l1=1.0, l2=0.25, ftrl_beta=beta)
    t, s = opt_lib.apply_rows(
      opt, jnp.zeros((1, 2)), opt.init_slots(1, 2), jnp.asarray([0]), g, jnp.int32(0)
    )
    want = [-(2.0 - 1.0) / ((beta + 2.0) / 0.5 + 0.25), -(-4.0 + 1.0) / ((beta + 4.0) / 0.5 + 0.25)]
    np.testing.assert_allclose(t[0], want, rtol=1e-6)
    np.testing.assert_allclose(s["n"][0], [4.0, 16.0])


def test_max_unique_bounds_the_distinct_rows_of_any_batch():
  layout = state_lib.build(
    tiny.tiny_config("esmm", **{"model.dense_mode": "bucket"}), tiny.tiny_schema()
  ).layout
  # Fields in table order: user 12, item 9, ctx 4 | hist 9 (3 slots), tags 6 (2 slots) | price 4,
  # age 4 buckets. A batch of 2 looks each single-valued field up twice and hist 6 times.
  assert layout.vocab_sizes == (12, 9, 4, 9, 6, 4, 4)
  assert layout.max_unique(2) == 2 + 2 + 2 + 6 + 4 + 2 + 2
  assert layout.max_unique(1000) == layout.num_rows == 12 + 9 + 4 + 9 + 6 + 4 + 4
  rng = np.random.default_rng(0)
  for n in (1, 3, 16):
    b = tiny.random_block(tiny.tiny_schema(), n, seed=n)
    b["sparse"][:] = rng.integers(-5, 30, b["sparse"].shape)  # ids outside their fields
    b["mv_ids"][:] = rng.integers(-5, 30, b["mv_ids"].shape)
    gids = np.asarray(
      layout.global_ids(jnp.asarray(b["sparse"]), jnp.asarray(b["mv_ids"]), jnp.asarray(b["dense"]))
    )
    assert len(np.unique(gids)) <= layout.max_unique(n)
    # Clamped into their own field's rows: column j stays within field j's [offset, offset + vocab).
    starts = np.repeat([0, 12, 21, 25, 34, 40, 44], [1, 1, 1, 3, 2, 1, 1])
    stops = starts + np.repeat(layout.vocab_sizes, [1, 1, 1, 3, 2, 1, 1])
    assert np.all((gids >= starts) & (gids < stops))


def _ids_and_grads(v=50, n=400, d=3, seed=1):
  rng = np.random.default_rng(seed)
  owned_elsewhere = rng.random(n) < 0.2  # ids of other devices: outside [0, v)
  ids = np.where(owned_elsewhere, rng.integers(v, 2 * v, n), rng.zipf(1.4, n) % v)
  grads = {s: jnp.asarray(rng.normal(size=(n, d)), jnp.float32) for s in ("a", "b")}
  return jnp.asarray(ids, jnp.int32), grads, len(set(ids.tolist()) & set(range(v)))


def test_compact_merge_sums_exactly_as_the_full_one():
  ids, grads, distinct = _ids_and_grads()
  g = grads["a"]
  _, u_full, g_full = jax.jit(merge.merge_with_scratch)(jnp.full((50,), -1, jnp.int32), ids, g)
  want = {int(u): np.asarray(g_full[i]) for i, u in enumerate(np.asarray(u_full)) if u < 50}
  for cap in (distinct, distinct + 7):
    scratch, u, gc = jax.jit(functools.partial(merge.merge_with_scratch, capacity=cap))(
      jnp.full((50,), -1, jnp.int32), ids, g
    )
    assert u.shape == (cap,) and np.all(np.asarray(scratch) == -1)
    got = {int(k): np.asarray(gc[i]) for i, k in enumerate(np.asarray(u)) if k < 50}
    assert got.keys() == want.keys() and len(got) == distinct
    for k in want:  # the same gradients added in the same order: the same bits
      np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("opt", opt_lib.names())
def test_compact_merge_updates_as_the_full_one(opt):
  """merged_update with a capacity (U compact rows) equals it without (N rows), with duplicates and
  ids other devices own. Bit for bit, except row-wise Adagrad: XLA vectorises its per-row mean
  differently for U and N rows, which can move a row by one float32 ulp."""
  ids, grads, distinct = _ids_and_grads()
  o = opt_lib.make(opt, learning_rate=0.1, initial_accumulator=0.1, l1=0.01)
  rng = np.random.default_rng(2)
  tables = {s: jnp.asarray(rng.normal(size=(50, 3)), jnp.float32) for s in grads}
  slots = {s: o.init_slots(50, 3) for s in grads}
  scratch = jnp.full((50,), -1, jnp.int32)
  full = jax.jit(functools.partial(engine_lib.merged_update, o, 3))(
    tables, slots, scratch, ids, grads, jnp.int32(2)
  )
  check = (
    functools.partial(np.testing.assert_allclose, rtol=3e-7, atol=0)
    if opt == "rowwise_adagrad"
    else np.testing.assert_array_equal
  )
  for cap in (distinct, distinct + 7, 400):
    compact = jax.jit(functools.partial(engine_lib.merged_update, o, 3, capacity=cap))(
      tables, slots, scratch, ids, grads, jnp.int32(2)
    )
    jax.tree_util.tree_map(lambda x, y: check(np.asarray(x), np.asarray(y)), compact, full)
  assert np.all(np.asarray(full[2]) == -1)
