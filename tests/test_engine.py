"""The sparse engine equals the dense-autodiff reference on a tiny table, for every optimizer."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from esmjax import config as config_lib
from esmjax import state as state_lib
from esmjax import steps
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
    t, s = opt_lib.apply_rows(opt, jnp.zeros((1, 2)), opt.init_slots(1, 2), jnp.asarray([0]), g,
                              jnp.int32(0))
    want = [-(2.0 - 1.0) / ((beta + 2.0) / 0.5 + 0.25), -(-4.0 + 1.0) / ((beta + 4.0) / 0.5 + 0.25)]
    np.testing.assert_allclose(t[0], want, rtol=1e-6)
    np.testing.assert_allclose(s["n"][0], [4.0, 16.0])
