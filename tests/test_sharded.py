"""The row-sharded engine: 8 devices train like 1, optimizers match the dense reference, the state
is born sharded, and the compiled step moves ids / rows / gradients, never a table."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from esmjax.config import defaults as config_lib
from esmjax.core import sharding as sh
from esmjax.core import state as state_lib
from esmjax.core import steps
from esmjax.data.format import dataset as D
from esmjax.embedding import engine as engine_lib
from esmjax.embedding import optimizers as opt_lib
from esmjax.embedding import sharded
from esmjax.training import trainer

# Vocabularies whose padded total (264 rows, 33 per device on 8) matches no batch, field or tower
# size, so a table-shaped collective in the compiled step cannot hide behind another array's shape.
SCHEMA = D.Schema(
  sparse=(D.SparseField("user", 101), D.SparseField("item", 57), D.SparseField("ctx", 31)),
  multi=(D.MultiField("hist", 73, 3, "sum"),),
  dense=(D.DenseField("price", 1.0, 2.0, (0.0, 1.0, 2.5)),),
  labels=("click", "buy", "cart", "wish", "daction"),
)
ROWS, PADDED8 = 101 + 57 + 31 + 73, 264


def _config(model="esmm", opt="rowwise_adagrad", **kw):
  cfg = tiny.tiny_config(model, **{"model.dense_mode": "tanh", **kw})
  cfg.embedding.optimizer = opt
  cfg.embedding.learning_rate = 0.1
  cfg.optimizer.learning_rate = 0.01
  return cfg


def _run(cfg, devices):
  return trainer.Run(cfg, SCHEMA, mesh=sh.make_mesh(devices, cfg.mesh.axis))


def _batches(n, seed=0):
  out = []
  for i in range(n):  # Zipf-like ids: many duplicates inside a batch and across batches
    b = tiny.random_block(SCHEMA, 64, seed + i)
    rng = np.random.default_rng(seed + 100 + i)
    b["sparse"][:] = np.minimum(rng.zipf(1.5, b["sparse"].shape) - 1, [101 - 1, 57 - 1, 31 - 1])
    out.append({k: b[k] for k in steps.BATCH_KEYS})
  return out


def _train(run, batches):
  state, losses = run.init_fn(), []
  for b in batches:
    state, m = run.train_step(state, sh.put_batch(b, run.mesh))
    losses.append(float(m["loss"]))
  return state, losses


def _host(x, rows=ROWS):
  return np.asarray(jax.device_get(x))[:rows]


@pytest.fixture(scope="module")
def runs():
  """ESMM with row-wise Adagrad on 1 device (replicated engine) and on 8 (row-sharded): compiled
  once for the whole module (compiles dominate these tests' time)."""
  cfg = _config("esmm")
  return _run(cfg, 1), _run(cfg, 8)


def test_eight_devices_train_like_one(runs):
  one, eight = runs
  assert not one.components.engine.row_sharded and eight.components.engine.row_sharded
  batches = _batches(4)
  s1, l1 = _train(one, batches)
  s8, l8 = _train(eight, batches)
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  assert l1[-1] < l1[0]
  assert s8.tables["shared"].sharding.spec == jax.sharding.PartitionSpec("data")
  np.testing.assert_allclose(
    _host(s8.tables["shared"]), _host(s1.tables["shared"]), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    _host(s8.slots["shared"]["acc"]), _host(s1.slots["shared"]["acc"]), rtol=1e-4, atol=1e-9
  )
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s8.params, s1.params
  )
  assert np.all(np.asarray(jax.device_get(s8.scratch)) == -1)  # the merge's row map is clean again


def test_sharded_training_equals_dense_autodiff(runs):
  """Three sharded steps on 8 devices == three dense-autodiff steps (gradients through the whole
  [V, D] table, then the dense optimizer) on one device."""
  one, eight = runs
  dense = jax.jit(functools.partial(steps.dense_train_step, one.components))
  a, b = eight.init_fn(), one.init_fn()
  for batch in _batches(3, seed=7):
    a, ma = eight.train_step(a, sh.put_batch(batch, eight.mesh))
    b, mb = dense(b, {k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-5)
  np.testing.assert_allclose(
    _host(a.tables["shared"]), _host(b.tables["shared"]), rtol=2e-5, atol=1e-7
  )
  np.testing.assert_allclose(
    _host(a.slots["shared"]["acc"]), _host(b.slots["shared"]["acc"]), rtol=2e-5, atol=1e-9
  )


def test_every_sparse_optimizer_sharded_equals_dense_reference():
  """Each optimizer, row-sharded over 8 devices with two table sets, equals the same optimizer
  applied to the dense [V, D] gradient on touched rows (untouched rows and slots unchanged)."""
  mesh = sh.make_mesh(8)
  layout = engine_lib.FeatureLayout(
    sparse_offsets=(0,),
    mv_offsets=(),
    mv_lens=(),
    dense_offsets=(),
    dense_boundaries=(),
    num_rows=PADDED8,
    padded_rows=PADDED8,
  )
  rng = np.random.default_rng(0)
  ids = [
    jnp.asarray(np.minimum(rng.zipf(1.3, (64, 5)) - 1, PADDED8 - 1), jnp.int32) for _ in range(3)
  ]
  grads = [
    {n: jnp.asarray(rng.normal(size=(64, 5, 4)), jnp.float32) for n in ("ctr", "cvr")}
    for _ in range(3)
  ]
  kinds = opt_lib.names()

  def run_all(ids, grads):
    out = {}
    for kind in kinds:
      opt = opt_lib.make(kind, learning_rate=0.1, initial_accumulator=0.1, l1=0.01, l2=0.01)
      eng = sharded.ShardedEngine(
        layout=layout, dim=4, table_names=("ctr", "cvr"), opt=opt, mesh=mesh
      )
      tables, slots, scratch = eng.init(jax.random.PRNGKey(1))
      ref_t, ref_s = dict(tables), dict(slots)
      for step, (i, g) in enumerate(zip(ids, grads, strict=True)):
        tables, slots, scratch = eng.update(tables, slots, scratch, i, g, jnp.int32(step))
        touched = jnp.zeros((PADDED8,), bool).at[i.reshape(-1)].set(True)
        for n in ref_t:
          dense_g = jnp.zeros((PADDED8, 4)).at[i.reshape(-1)].add(g[n].reshape(-1, 4))
          ref_t[n], ref_s[n] = opt_lib.dense_reference_update(
            opt, ref_t[n], ref_s[n], dense_g, jnp.int32(step), touched
          )
      out[kind] = (tables, slots, ref_t, ref_s, scratch)
    return out

  out = jax.device_get(jax.jit(run_all)(ids, grads))

  def close(a, b, kind, atol):
    # Float rounding of sums in another order, relative to the array's scale: FTRL's z reaches ~60
    # and some entries cancel to ~1e-2, so an absolute 1e-7 would be below f32 resolution there.
    np.testing.assert_allclose(
      a, b, rtol=2e-5, atol=atol * max(1.0, float(np.abs(b).max())), err_msg=kind
    )

  for kind, (tables, slots, ref_t, ref_s, scratch) in out.items():
    # Adam divides by |g|: where duplicates nearly cancel, the other summation order of the merge
    # moves the step by ~1e-6 (seen: 7.5e-7); the other optimizers agree to float rounding.
    atol = 2e-6 if kind == "lazy_adam" else 1e-7
    for n in ("ctr", "cvr"):
      close(tables[n], ref_t[n], kind, atol)
      jax.tree_util.tree_map(functools.partial(close, kind=kind, atol=atol), slots[n], ref_s[n])
    assert np.all(scratch == -1), kind
  assert not np.allclose(out["sgd"][0]["ctr"], out["sgd"][0]["cvr"])  # two sets, two init streams


def test_state_is_born_sharded_and_starts_like_one_device(runs):
  one, eight = runs
  hlo = eight.init_fn.lower().compile().as_text()
  assert f"[{PADDED8},4]" not in hlo and f"[{PADDED8}]" not in hlo  # no whole table on a device
  assert "f32[33,4]" in hlo  # each device builds its 264 / 8 rows
  s8 = eight.init_fn()
  for x in jax.tree_util.tree_leaves((s8.tables, s8.slots, s8.scratch)):
    assert {s.data.shape[0] for s in x.addressable_shards} == {33}
  s1 = one.init_fn()
  np.testing.assert_array_equal(_host(s8.tables["shared"]), _host(s1.tables["shared"]))


def test_compiled_step_moves_no_table(runs):
  """Collectives of the compiled 8-device step carry ids [64, C], rows / gradients [64, C, 4] and
  tower gradients; none is table-, slot- or scratch-shaped (264 rows global, 33 per device)."""
  _, eight = runs
  state = eight.init_fn()
  batch = sh.put_batch(_batches(1)[0], eight.mesh)
  hlo = eight.train_step.lower(state, batch).compile().as_text()
  ops = [
    m.groups()
    for line in hlo.splitlines()
    if (
      m := re.search(
        r"= (.*?) "
        r"(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?:-start)?\(",
        line,
      )
    )
  ]
  kinds = {k for _, k in ops}
  assert {"all-gather", "reduce-scatter"} <= kinds, kinds  # the lookup / update collectives exist
  for shape, kind in ops:
    if kind == "all-gather":  # ids and row gradients of the global batch, nothing else
      assert all(a.startswith("64,") for a in re.findall(r"\[([\d,]*)\]", shape)), shape
  for shape, kind in ops:
    dims = [int(d) for d in re.findall(r"\[(\d+)", shape)]
    assert not set(dims) & {PADDED8, PADDED8 // 8}, (kind, shape)
  assert f"[{PADDED8}," not in hlo and f"[{PADDED8}]" not in hlo  # no device holds a whole table
  assert not _table_sized_work(hlo, PADDED8 // 8)


def _table_sized_work(hlo: str, rows: int) -> list[str]:
  """Instructions of the compiled step that make a table-, slot- or scratch-sized array other than
  the donated inputs and the in-place row scatters into them (a copy or a memset: O(table))."""
  entry = hlo[hlo.index("\nENTRY") :]
  bad = []
  for line in entry.splitlines()[1:]:
    m = re.search(rf"= [a-z0-9]+\[{rows}[,\]]\S* ([a-z-]+)\(", line)
    if m and not (
      m.group(1) in ("parameter", "scatter") or re.search(r"calls=%[\w.]*scatter", line)
    ):
      bad.append(line.strip()[:160])
  return bad


def test_single_device_step_touches_no_whole_table(runs):
  """The step's cost is what the batch touches: besides its inputs, nothing table-sized is made."""
  one, _ = runs
  state = one.init_fn()
  hlo = one.train_step.lower(state, sh.put_batch(_batches(1)[0], one.mesh)).compile().as_text()
  assert f"f32[{ROWS},4]" in hlo and not _table_sized_work(hlo, ROWS)


def test_bf16_tables_and_towers_train_sharded(runs):
  cfg = _config("esmm", **{"model.dtype": "bfloat16"})
  cfg.embedding.dtype = "bfloat16"
  bf16 = _run(cfg, 8)
  batch = _batches(1, seed=3)[0]
  state, losses = _train(bf16, [batch] * 12)  # one batch, over and over: the loss must fall
  assert (
    state.tables["shared"].dtype == jnp.bfloat16
    and state.slots["shared"]["acc"].dtype == jnp.float32
  )
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
  _, l32 = _train(runs[1], [batch] * 12)
  np.testing.assert_allclose(losses, l32, rtol=0.05)  # bf16 tracks f32 (no drift, no divergence)


def test_eight_devices_train_like_one_in_bf16():
  """The bf16 towers (what model.dtype=auto picks on a CPU with bf16 units) on 8 devices train
  like on 1: the same program per row, so the same tolerances as f32 (the tables' f32 row
  updates are merged in another order; the towers round the same pooled inputs to bf16)."""
  cfg = _config("esmm", **{"model.dtype": "bfloat16"})
  one, eight = _run(cfg, 1), _run(cfg, 8)
  batches = _batches(4)
  s1, l1 = _train(one, batches)
  s8, l8 = _train(eight, batches)
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  assert l1[-1] < l1[0]
  np.testing.assert_allclose(
    _host(s8.tables["shared"]), _host(s1.tables["shared"]), rtol=1e-4, atol=1e-6
  )
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s8.params, s1.params
  )


def test_embedding_sharding_config_picks_the_engine():
  mesh1, mesh8 = sh.make_mesh(1), sh.make_mesh(8)
  cfg = _config("esmm")
  assert type(state_lib.build(cfg, SCHEMA, mesh=mesh1).engine) is engine_lib.Engine
  assert (
    type(state_lib.build(cfg, SCHEMA, mesh=mesh8, row_multiple=8).engine) is sharded.ShardedEngine
  )
  cfg.embedding.sharding = "replicated"
  assert type(state_lib.build(cfg, SCHEMA, mesh=mesh8, row_multiple=8).engine) is engine_lib.Engine
  cfg.embedding.sharding = "row"
  assert type(state_lib.build(cfg, SCHEMA, mesh=mesh1).engine) is sharded.ShardedEngine
  cfg.embedding.sharding = "rows"
  with pytest.raises(
    config_lib.ConfigError, match=r"embedding.sharding='rows'.*'auto', 'replicated', 'row'"
  ):
    config_lib.validate(cfg)
