"""The PyTorch reference (benchmarks/torch_reference.py) is the same model as esmjax: on esmjax's
weights copied over, its probabilities and loss equal esmjax's, and its optimizers take the same
steps. Skipped where torch is not installed (CI installs only the dev extra)."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
)

import tiny  # noqa: E402
import torch_reference as tr  # noqa: E402

from esmjax.core import state as state_lib  # noqa: E402
from esmjax.core import steps  # noqa: E402

torch.set_num_threads(1)


def _setup(model: str, dense_mode: str = "tanh", opt: str = "rowwise_adagrad"):
  cfg = tiny.tiny_config(model)
  cfg.model.dense_mode = dense_mode
  cfg.embedding.init_std = 0.5  # embeddings large enough to move every output
  cfg.embedding.optimizer = opt
  cfg.embedding.learning_rate = 0.1
  cfg.embedding.eps = 1e-12  # SparseAdam's eps sits elsewhere (see torch_reference); make it vanish
  schema = tiny.tiny_schema()
  c = state_lib.build(cfg, schema)
  return cfg, schema, c, state_lib.init_state(c, 0)


def _batch(schema, seed=0, n=64):
  return tiny.random_block(schema, n, seed)


def _jax(b):
  return {k: jnp.asarray(b[k]) for k in steps.BATCH_KEYS}


def _esmjax_forward(c, state, batch):
  """(probabilities, loss, per-task losses) of esmjax's own step code, in one jit."""
  emb = c.engine.lookup(
    state.tables, c.layout.global_ids(batch["sparse"], batch["mv_ids"], batch["dense"])
  )
  loss, parts = steps._loss_fn(c, state.params, emb, batch, state.rng, False)
  return steps.predict_step(c, state, batch), {
    "loss": loss,
    **{f"loss/{k}": v for k, v in parts.items()},
  }


@pytest.mark.parametrize(
  "model,dense_mode", [("esmm", "tanh"), ("esm2", "bucket"), ("esmm_ns", "tanh")]
)
def test_forward_probabilities_and_loss_equal_esmjax(model, dense_mode):
  cfg, schema, c, state = _setup(model, dense_mode)
  b = _batch(schema)
  want, m = jax.jit(functools.partial(_esmjax_forward, c))(state, _jax(b))
  tm = tr.TorchMultiTask.from_config(cfg, schema)
  tm.load_esmjax(state)
  tb = tr.to_torch(b)
  got = tm.probabilities(tb)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k].numpy(), np.asarray(want[k]), rtol=2e-5, atol=1e-7, err_msg=k)
  loss, parts = tm.head_loss(tm.lookup(tb), tb["dense"], tb["labels"])
  np.testing.assert_allclose(float(loss.detach()), float(m["loss"]), rtol=1e-5)
  for k, v in parts.items():
    np.testing.assert_allclose(float(v.detach()), float(m[f"loss/{k}"]), rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("opt", ["rowwise_adagrad", "adagrad", "lazy_adam"])
def test_train_steps_equal_esmjax(opt):
  cfg, schema, c, state = _setup("esmm", "tanh", opt)
  tm = tr.TorchMultiTask.from_config(cfg, schema)
  tm.load_esmjax(state)
  trainer = tr.Trainer(tm, cfg, tr.Variant(opt))
  step = jax.jit(functools.partial(steps.train_step, c))
  for i in range(3):  # repeated ids within and across batches: duplicate merge + optimizer slots
    b = _batch(schema, seed=10 + i)
    state, m = step(state, _jax(b))
    loss = trainer.step(tr.to_torch(b))
    np.testing.assert_allclose(float(loss), float(m["loss"]), rtol=1e-5)
  np.testing.assert_allclose(
    tm.tables["shared"].weight.detach().numpy(),
    np.asarray(state.tables["shared"]),
    rtol=1e-4,
    atol=2e-6,
  )
  k = np.asarray(state.params["tower_cvr"]["Dense_0"]["kernel"]).T
  np.testing.assert_allclose(tm.tower["cvr"][0].weight.detach().numpy(), k, rtol=1e-4, atol=2e-6)


def _table(tm) -> np.ndarray:
  return tm.tables["shared"].weight.detach().numpy()


def _assert_towers_equal(tm, state, towers=("ctr", "cvr")):
  for t in towers:
    k = np.asarray(state.params[f"tower_{t}"]["Dense_0"]["kernel"]).T
    got = tm.tower[t][0].weight.detach().numpy()
    np.testing.assert_allclose(got, k, rtol=1e-4, atol=2e-6, err_msg=t)


def _train_both(cfg, schema, c, state, variant: str, batches):
  """Trains esmjax and the PyTorch `variant` from the same weights on `batches`, asserting equal
  losses step by step; yields (step, esmjax state, torch model) after each step."""
  tm = tr.TorchMultiTask.from_config(cfg, schema, sparse=tr.Variant.parse(variant).sparse)
  tm.load_esmjax(state)
  trainer = tr.Trainer(tm, cfg, tr.Variant.parse(variant))
  step = jax.jit(functools.partial(steps.train_step, c))
  for i, b in enumerate(batches):
    state, m = step(state, _jax(b))
    loss = trainer.step(tr.to_torch(b))
    np.testing.assert_allclose(
      float(loss), float(m["loss"]), rtol=1e-5, err_msg=f"{variant} step {i + 1}"
    )
    yield i + 1, state, tm


@pytest.mark.parametrize(
  "variant,opt",
  [("compile-dense-rowwise_adagrad", "rowwise_adagrad"), ("compile-dense-adagrad", "adagrad")],
)
def test_compiled_dense_variants_equal_esmjax(variant, opt):
  """torch.compile over lookups + towers + loss with dense [V, D] gradients: dense Adagrad
  (element- or row-wise) leaves zero-gradient rows and their accumulators as they are, so it
  takes esmjax's sparse steps exactly."""
  cfg, schema, c, state = _setup("esmm", "tanh", opt)
  batches = [_batch(schema, seed=10 + i) for i in range(3)]  # repeated ids: merge + slots
  *_, (_, state, tm) = _train_both(cfg, schema, c, state, variant, batches)
  np.testing.assert_allclose(_table(tm), np.asarray(state.tables["shared"]), rtol=1e-4, atol=2e-6)
  _assert_towers_equal(tm, state)


def test_compiled_dense_adam_equals_lazy_adam_until_a_row_is_skipped():
  """compile-dense-adam (torch.optim.Adam on the tables' dense gradients) against esmjax's
  lazy_adam (same lr, betas, eps). Step 1: every row equal (an untouched row has m = v = 0 and
  stays). Step 2: the same losses, towers and every row step 2 looked up or neither step did; a
  row only step 1 looked up is moved again by dense Adam, by exactly lr·m̂/(√v̂ + eps) of its
  decayed moments, and lazy Adam leaves it."""
  cfg, schema, _, initial = _setup("esmm", "tanh", "lazy_adam")
  cfg.embedding.eps = 1e-8  # torch.optim.Adam adds eps to √v̂ as esmjax does: the real value
  c = state_lib.build(cfg, schema)
  e = cfg.embedding
  batches = [_batch(schema, seed=30 + i, n=4) for i in range(2)]  # small: rows only in step 1
  looked = [
    np.unique(np.asarray(c.layout.global_ids(b["sparse"], b["mv_ids"], b["dense"])))
    for b in batches
  ]
  only_first = np.setdiff1d(looked[0], looked[1])
  assert only_first.size, "the batches must leave rows to step 2 that step 1 looked up"
  for i, state, tm in _train_both(cfg, schema, c, initial, "compile-dense-adam", batches):
    if i == 1:
      np.testing.assert_allclose(
        _table(tm), np.asarray(state.tables["shared"]), rtol=1e-4, atol=2e-6
      )
  got, lazy = _table(tm), np.asarray(state.tables["shared"])
  same = np.setdiff1d(np.arange(lazy.shape[0]), only_first)
  np.testing.assert_allclose(got[same], lazy[same], rtol=1e-4, atol=2e-6)
  m, v = (np.asarray(state.slots["shared"][k])[only_first] for k in ("m", "v"))  # from step 1
  step = (
    e.learning_rate
    * (e.beta1 * m / (1 - e.beta1**2))
    / (np.sqrt(e.beta2 * v / (1 - e.beta2**2)) + e.eps)
  )
  np.testing.assert_allclose(got[only_first], lazy[only_first] - step, rtol=1e-4, atol=2e-6)
  assert np.abs(got[only_first] - lazy[only_first]).max() > 1e-3  # the decay shows, not noise
  _assert_towers_equal(tm, state)


def test_dense_gradients_take_the_same_steps_as_sparse():
  cfg, schema, c, state = _setup("esm2", "tanh", "rowwise_adagrad")
  out = {}
  for sparse in (True, False):
    torch.manual_seed(0)
    tm = tr.TorchMultiTask.from_config(cfg, schema, sparse=sparse)
    tm.load_esmjax(state)
    trainer = tr.Trainer(tm, cfg, tr.Variant("rowwise_adagrad", sparse=sparse))
    for i in range(2):
      trainer.step(tr.to_torch(_batch(schema, seed=20 + i)))
    out[sparse] = tm.tables["shared"].weight.detach().numpy().copy()
  np.testing.assert_allclose(out[True], out[False], rtol=1e-5, atol=1e-7)


def test_variant_names_round_trip_and_errors_name_the_values():
  for name in (
    "eager-sparse-rowwise_adagrad",
    "compile-dense-adagrad",
    "eager-sparse-lazy_adam",
    "compile-dense-adam",
    "compile-dense-adam-bf16",
  ):
    assert tr.Variant.parse(name).name == name
  assert tr.Variant.parse("eager-sparse-adagrad-bf16").bf16
  assert not tr.Variant.parse("eager-sparse-adagrad").bf16
  with pytest.raises(ValueError, match=r"lazy_adam needs sparse"):
    tr.Variant.parse("eager-dense-lazy_adam")
  with pytest.raises(ValueError, match=r"adam needs dense gradients"):
    tr.Variant.parse("compile-sparse-adam")
  allowed = r"allowed: \['rowwise_adagrad', 'adagrad', 'lazy_adam', 'adam'\]"
  with pytest.raises(ValueError, match=allowed):
    tr.Variant("ftrl")
  cfg, schema, _, _ = _setup("esmm")
  cfg.model.name = "base"
  with pytest.raises(ValueError, match=r"model.name='base' has no PyTorch reference.*'esm2'"):
    tr.TorchMultiTask.from_config(cfg, schema)


def test_bf16_autocast_variant_runs_the_towers_in_bf16_and_the_loss_in_f32():
  """The autocast variant: same weights, a loss in f32 within bf16 rounding of the f32 step's (1 %),
  but not equal to it (the matmuls did run in bf16); weights and tables stay f32."""
  cfg, schema, c, state = _setup("esmm")
  b = tr.to_torch(_batch(schema, seed=4))
  losses = {}
  for name in ("eager-sparse-rowwise_adagrad", "eager-sparse-rowwise_adagrad-bf16"):
    tm = tr.TorchMultiTask.from_config(cfg, schema, sparse=True)
    tm.load_esmjax(state)
    loss = tr.Trainer(tm, cfg, tr.Variant.parse(name)).step(b)
    assert loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in tm.parameters())
    losses[name] = float(loss)
  f32, bf16 = losses.values()
  assert f32 != bf16 and abs(bf16 - f32) < 1e-2 * abs(f32), losses
