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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import tiny  # noqa: E402
import torch_reference as tr  # noqa: E402
from esmjax import state as state_lib  # noqa: E402
from esmjax import steps  # noqa: E402

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
  emb = c.engine.lookup(state.tables, c.layout.global_ids(batch["sparse"], batch["mv_ids"], batch["dense"]))
  loss, parts = steps._loss_fn(c, state.params, emb, batch, state.rng, False)
  return steps.predict_step(c, state, batch), {"loss": loss, **{f"loss/{k}": v for k, v in parts.items()}}


@pytest.mark.parametrize("model,dense_mode", [("esmm", "tanh"), ("esm2", "bucket"), ("esmm_ns", "tanh")])
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
  np.testing.assert_allclose(tm.tables["shared"].weight.detach().numpy(), np.asarray(state.tables["shared"]),
                             rtol=1e-4, atol=2e-6)
  k = np.asarray(state.params["tower_cvr"]["Dense_0"]["kernel"]).T
  np.testing.assert_allclose(tm.tower["cvr"][0].weight.detach().numpy(), k, rtol=1e-4, atol=2e-6)


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
  for name in ("eager-sparse-rowwise_adagrad", "compile-dense-adagrad", "eager-sparse-lazy_adam"):
    assert tr.Variant.parse(name).name == name
  with pytest.raises(ValueError, match=r"lazy_adam needs sparse"):
    tr.Variant.parse("eager-dense-lazy_adam")
  with pytest.raises(ValueError, match=r"allowed: \['rowwise_adagrad', 'adagrad', 'lazy_adam'\]"):
    tr.Variant("ftrl")
  cfg, schema, _, _ = _setup("esmm")
  cfg.model.name = "base"
  with pytest.raises(ValueError, match=r"model.name='base' has no PyTorch reference.*'esm2'"):
    tr.TorchMultiTask.from_config(cfg, schema)
