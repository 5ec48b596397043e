"""ESCM² (IPW, DR) and AITM against NumPy on tiny batches, and ESM2 on logs with cart / wish but
no daction column."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from esmjax.core import state as state_lib
from esmjax.core import steps
from esmjax.data.format import dataset as D
from esmjax.models import registry


def sig(a):
  return 1.0 / (1.0 + np.exp(-np.asarray(a, np.float64)))


def bce(y, p):
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _batch(n=32, seed=0, names=("ctr", "cvr", "imputation")):
  rng = np.random.default_rng(seed)
  z = {k: rng.normal(0, 2, n).astype(np.float32) for k in names}
  click = (rng.random(n) < 0.5).astype(np.float32)
  buy = click * (rng.random(n) < 0.5)
  return z, click, buy


def _jax(z, click, buy):
  return (
    {k: jnp.asarray(v) for k, v in z.items()},
    {"click": jnp.asarray(click), "buy": jnp.asarray(buy)},
  )


def test_escm2_ipw_probabilities_and_loss_match_numpy():
  z, click, buy = _batch()
  m = registry.get("escm2_ipw")()
  zj, lab = _jax(z, click, buy)
  p = m.probabilities(zj)
  pctr, pcvr = sig(z["ctr"]), sig(z["cvr"])
  np.testing.assert_allclose(p["pctr"], pctr, rtol=1e-5)
  np.testing.assert_allclose(p["pcvr"], pcvr, rtol=1e-5)
  np.testing.assert_allclose(p["pctcvr"], pctr * pcvr, rtol=1e-5)
  loss, parts = m.loss(zj, lab, jax.random.PRNGKey(0))
  risk = np.mean(click * bce(buy, pcvr) / np.maximum(pctr, 0.05))
  ctr, ctcvr = np.mean(bce(click, pctr)), np.mean(bce(click * buy, pctr * pcvr))
  np.testing.assert_allclose(parts["cvr"], risk, rtol=1e-5)
  np.testing.assert_allclose(parts["ctr"], ctr, rtol=1e-5)
  np.testing.assert_allclose(parts["ctcvr"], ctcvr, rtol=1e-5)
  np.testing.assert_allclose(loss, ctr + 0.5 * risk + 0.5 * ctcvr, rtol=1e-5)
  # The propensity carries no gradient: the risk does not move the CTR logits.
  g = jax.grad(lambda a: m.loss({**zj, "ctr": a}, lab, jax.random.PRNGKey(0))[1]["cvr"])(zj["ctr"])
  np.testing.assert_array_equal(g, 0.0)


def test_escm2_ipw_floor_and_weights_come_from_the_config():
  z, click, buy = _batch(seed=1)
  z["ctr"][:] = -6.0  # pCTR ≈ 0.0025, below any floor: every weight is 1/floor
  cfg = tiny.tiny_config("escm2_ipw")
  cfg.model.escm2_min_pctr = 0.2
  cfg.model.escm2_loss_weights = (0.0, 1.0, 0.0)
  m = state_lib.build(cfg, tiny.tiny_schema()).model
  loss, _ = m.loss(*_jax(z, click, buy), jax.random.PRNGKey(0))
  np.testing.assert_allclose(loss, np.mean(click * bce(buy, sig(z["cvr"])) / 0.2), rtol=1e-5)


def test_escm2_dr_risk_imputation_and_gradient_stops_match_numpy():
  z, click, buy = _batch(seed=2)
  m = registry.get("escm2_dr")()
  assert [t for t, _ in m.towers] == ["ctr", "cvr", "imputation"] and m.table_sets == ("shared",)
  zj, lab = _jax(z, click, buy)
  loss, parts = m.loss(zj, lab, jax.random.PRNGKey(0))
  pctr, pcvr = sig(z["ctr"]), sig(z["cvr"])
  prop = np.maximum(pctr, 0.05)
  e, e_hat = bce(buy, pcvr), np.log1p(np.exp(np.asarray(z["imputation"], np.float64)))
  risk = np.mean(e_hat + click * (e - e_hat) / prop)
  imputation = np.mean(click * (e - e_hat) ** 2 / prop)
  ctr, ctcvr = np.mean(bce(click, pctr)), np.mean(bce(click * buy, pctr * pcvr))
  np.testing.assert_allclose(parts["cvr"], risk, rtol=1e-5)
  np.testing.assert_allclose(parts["imputation"], imputation, rtol=1e-5)
  np.testing.assert_allclose(loss, ctr + 0.5 * (risk + imputation) + 0.5 * ctcvr, rtol=1e-5)
  np.testing.assert_allclose(m.probabilities(zj)["pctcvr"], pctr * pcvr, rtol=1e-5)

  def grad(part, tower):
    f = lambda a: m.loss({**zj, tower: a}, lab, jax.random.PRNGKey(0))[1][part]
    return jax.grad(f)(zj[tower])

  # R_DR trains the CVR tower only, the imputation loss the imputation tower only.
  np.testing.assert_array_equal(grad("cvr", "imputation"), 0.0)
  np.testing.assert_array_equal(grad("cvr", "ctr"), 0.0)
  np.testing.assert_array_equal(grad("imputation", "cvr"), 0.0)
  np.testing.assert_array_equal(grad("imputation", "ctr"), 0.0)
  assert np.any(grad("cvr", "cvr") != 0) and np.any(grad("imputation", "imputation") != 0)


SPARSE_ONLY = D.Schema(
  sparse=(D.SparseField("user", 7), D.SparseField("item", 5)), labels=("click", "buy")
)


def _aitm_numpy(params, x):
  """AITM's forward in NumPy from its params and the tower input x [B, in]."""
  relu = lambda v: np.maximum(v, 0.0)
  f64 = lambda a: np.asarray(a, np.float64)
  dense = lambda p, v: v @ f64(p["kernel"]) + f64(p.get("bias", 0.0))
  q = {}
  for t in ("click", "conversion"):
    h = x
    for i in range(2):
      h = relu(dense(params[f"tower_{t}"][f"Dense_{i}"], h))
    q[t] = h
  p = relu(dense(params["info"], q["click"]))
  s = np.stack([q["conversion"], p], 1)  # [B, 2, h]
  tr = params["transfer"]
  qq, kk, vv = (s @ np.asarray(tr[n]["kernel"], np.float64) for n in ("query", "key", "value"))
  logits = np.sum(qq * kk, -1) / np.sqrt(s.shape[-1])
  a = np.exp(logits - logits.max(1, keepdims=True))
  a = a / a.sum(1, keepdims=True)
  zc = np.sum(a[..., None] * vv, 1)
  return dense(params["head_click"], q["click"])[:, 0], dense(params["head_conversion"], zc)[:, 0]


def test_aitm_network_probabilities_and_loss_match_numpy():
  cfg = tiny.tiny_config("aitm")
  cfg.model.dense_mode = "none"
  cfg.embedding.init_std = 0.5
  c = state_lib.build(cfg, SPARSE_ONLY)
  state = state_lib.init_state(c, 0)
  rng = np.random.default_rng(3)
  b = D.empty_block(SPARSE_ONLY, 16)
  b["sparse"][:] = np.stack([rng.integers(0, f.vocab_size, 16) for f in SPARSE_ONLY.sparse], 1)
  click = rng.random(16) < 0.5
  b["labels"][:] = np.stack([click, click & (rng.random(16) < 0.5)], 1)
  b = {k: jnp.asarray(b[k]) for k in steps.BATCH_KEYS}
  gids = c.layout.global_ids(b["sparse"], b["mv_ids"], b["dense"])
  emb = c.engine.lookup(state.tables, gids)
  z = c.model.apply({"params": state.params}, emb, b["mv_w"], b["dense"])
  x = np.asarray(emb["shared"], np.float64).reshape(16, -1)
  a_click, a_ctcvr = _aitm_numpy(jax.device_get(state.params), x)
  np.testing.assert_allclose(z["click"], a_click, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(z["ctcvr"], a_ctcvr, rtol=2e-4, atol=1e-6)

  pctr, pctcvr = sig(a_click), sig(a_ctcvr)
  p = steps.predict_step(c, state, b)
  np.testing.assert_allclose(p["pctr"], pctr, rtol=1e-4)
  np.testing.assert_allclose(p["pctcvr"], pctcvr, rtol=1e-4)
  np.testing.assert_allclose(p["pcvr"], np.minimum(pctcvr / pctr, 1.0), rtol=1e-4)

  click = np.asarray(b["labels"][:, 0], np.float64)
  buy = np.asarray(b["labels"][:, 1], np.float64)
  loss, parts = c.model.loss(
    z,
    {"click": jnp.asarray(click, jnp.float32), "buy": jnp.asarray(buy, jnp.float32)},
    jax.random.PRNGKey(0),
  )
  calibrator = np.mean(np.maximum(pctcvr - pctr, 0.0))
  want = np.mean(bce(click, pctr)) + np.mean(bce(click * buy, pctcvr)) + 0.6 * calibrator
  np.testing.assert_allclose(parts["calibrator"], calibrator, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(loss, want, rtol=1e-4)


def test_aitm_calibrator_penalises_only_a_later_step_above_an_earlier_one():
  m = registry.get("aitm")()
  z = {"click": jnp.asarray([0.0, 2.0]), "ctcvr": jnp.asarray([1.0, -1.0])}
  lab = {"click": jnp.asarray([1.0, 0.0]), "buy": jnp.asarray([0.0, 0.0])}
  _, parts = m.loss(z, lab, jax.random.PRNGKey(0))
  np.testing.assert_allclose(parts["calibrator"], (sig(1.0) - 0.5) / 2, rtol=1e-6)


@pytest.mark.parametrize("name", ["escm2_ipw", "escm2_dr", "aitm"])
def test_new_models_train_and_predict_every_probability(name):
  cfg = tiny.tiny_config(name)
  c = state_lib.build(cfg, tiny.tiny_schema())
  s = state_lib.init_state(c, 0)
  step = jax.jit(functools.partial(steps.train_step, c))
  b = {
    k: jnp.asarray(v)
    for k, v in tiny.random_block(tiny.tiny_schema(), 64).items()
    if k in steps.BATCH_KEYS
  }
  losses = []
  for _ in range(5):
    s, m = step(s, b)
    losses.append(float(m["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  p = steps.predict_step(c, s, b)
  assert {"pctr", "pcvr", "pctcvr"} <= set(p)
  for v in p.values():
    assert np.all((np.asarray(v) >= 0) & (np.asarray(v) <= 1))
  assert c.model.flops_per_example() > 0


# -- ESM2 on logs with cart / wish but no daction ------------------------------------------------


def _esm2(labels, **model):
  cfg = tiny.tiny_config("esm2")
  for k, v in model.items():
    cfg.model[k] = v
  return state_lib.build(cfg, tiny.tiny_schema(labels=labels, truth=()))


def _block(labels, seed=0):
  full = tiny.random_block(tiny.tiny_schema(truth=()), 64, seed)
  schema = tiny.tiny_schema(labels=labels, truth=())
  b = {k: full[k] for k in steps.BATCH_KEYS}
  b["labels"] = full["labels"][:, [tiny.tiny_schema().labels.index(l) for l in labels]]
  return {k: jnp.asarray(v) for k, v in b.items()}, schema


def test_esm2_derives_daction_from_cart_or_wish():
  c = _esm2(("click", "buy", "cart", "wish"))
  assert c.label_columns["daction"] == (2, 3)
  b, _ = _block(("click", "buy", "cart", "wish"))
  lab = steps.labels(c, b)
  np.testing.assert_array_equal(lab["daction"], np.maximum(b["labels"][:, 2], b["labels"][:, 3]))
  # The same step as on the logs that record daction (= cart ∨ wish) as a column.
  c_full = _esm2(("click", "buy", "cart", "wish", "daction"))
  b_full, _ = _block(("click", "buy", "cart", "wish", "daction"))
  s = state_lib.init_state(c, 0)
  _, m = jax.jit(functools.partial(steps.train_step, c))(s, b)
  _, m_full = jax.jit(functools.partial(steps.train_step, c_full))(s, b_full)
  assert float(m["loss/ctavr"]) == float(m_full["loss/ctavr"])
  assert float(m["loss"]) == float(m_full["loss"])


def test_esm2_with_cart_only_or_wish_only_logs():
  assert _esm2(("click", "buy", "cart")).label_columns["daction"] == (2,)
  assert _esm2(("click", "buy", "wish")).label_columns["daction"] == (2,)


def test_esm2_daction_label_ablation_still_picks_one_column():
  c = _esm2(("click", "buy", "cart", "wish"), daction_label="wish")
  assert c.label_columns["daction"] == (3,)
  with pytest.raises(
    ValueError, match=r"model.daction_label='cart', but the dataset has only labels"
  ):
    _esm2(("click", "buy", "wish"), daction_label="cart")


def test_esm2_without_daction_cart_or_wish_names_what_it_needs():
  with pytest.raises(
    ValueError,
    match=r"model.name='esm2' needs a DAction label: a 'daction' "
    r"column, or 'cart' and/or 'wish'.*\['click', 'buy'\]",
  ):
    _esm2(("click", "buy"))
