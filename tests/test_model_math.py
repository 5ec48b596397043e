"""Model math against NumPy: pCTCVR, pCTAVR, ESM2's pCVR, log-space losses; the model registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esmjax.models import losses as L
from esmjax.models import model as model_lib
from esmjax.models import registry


def sig(a):
  return 1.0 / (1.0 + np.exp(-a))


def logits(n=64, seed=0, names=("ctr", "cvr", "daction", "buy_d", "buy_o", "ctcvr")):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(0, 2, n).astype(np.float32) for k in names}


def probs(name, z):
  return registry.get(name)().probabilities({k: jnp.asarray(v) for k, v in z.items()})


def test_esmm_probabilities_match_numpy():
  z = logits()
  p = probs("esmm", z)
  np.testing.assert_allclose(p["pctr"], sig(z["ctr"]), rtol=1e-5)
  np.testing.assert_allclose(p["pcvr"], sig(z["cvr"]), rtol=1e-5)
  np.testing.assert_allclose(p["pctcvr"], sig(z["ctr"]) * sig(z["cvr"]), rtol=1e-5)


def test_esm2_probabilities_match_numpy():
  z = logits(seed=1)
  p = probs("esm2", z)
  y1, y2, y3, y4 = sig(z["ctr"]), sig(z["daction"]), sig(z["buy_d"]), sig(z["buy_o"])
  pcvr = y2 * y3 + (1 - y2) * y4
  np.testing.assert_allclose(p["pctavr"], y1 * y2, rtol=1e-5)
  np.testing.assert_allclose(p["pcvr"], pcvr, rtol=1e-5)
  np.testing.assert_allclose(p["pctcvr"], y1 * pcvr, rtol=1e-5)


def test_division_caps_pcvr_at_one():
  z = {"ctr": jnp.asarray([0.0, -3.0]), "ctcvr": jnp.asarray([-1.0, 2.0])}
  p = registry.get("division")().probabilities(z)
  np.testing.assert_allclose(p["pcvr"], [sig(-1.0) / 0.5, 1.0], rtol=1e-5)


def naive_bce(y, p):
  return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_log_space_loss_equals_naive_where_finite():
  z = logits(seed=2)
  rng = np.random.default_rng(3)
  click = (rng.random(64) < 0.5).astype(np.float32)
  buy = click * (rng.random(64) < 0.5)
  lab = {"click": jnp.asarray(click), "buy": jnp.asarray(buy)}
  loss, parts = registry.get("esmm")().loss(
    {k: jnp.asarray(v) for k, v in z.items()}, lab, jax.random.PRNGKey(0)
  )
  pctr, pctcvr = (
    sig(z["ctr"].astype(np.float64)),
    sig(z["ctr"].astype(np.float64)) * sig(z["cvr"].astype(np.float64)),
  )
  np.testing.assert_allclose(parts["ctr"], naive_bce(click, pctr), rtol=1e-5)
  np.testing.assert_allclose(parts["ctcvr"], naive_bce(click * buy, pctcvr), rtol=1e-5)
  np.testing.assert_allclose(
    loss, naive_bce(click, pctr) + naive_bce(click * buy, pctcvr), rtol=1e-5
  )


def test_log_space_loss_finite_where_naive_is_not():
  # pCTR·pCVR underflows to 0 in float32 for these logits: the naive loss is inf, ours is finite.
  a_ctr = jnp.asarray([-60.0, 60.0, 30.0], jnp.float32)
  a_cvr = jnp.asarray([-60.0, 60.0, 40.0], jnp.float32)
  y = jnp.asarray([1.0, 0.0, 0.0])
  naive = jax.nn.sigmoid(a_ctr) * jax.nn.sigmoid(a_cvr)
  naive_loss = -(y * jnp.log(naive) + (1 - y) * jnp.log(1 - naive))
  assert not np.all(np.isfinite(naive_loss))
  f = lambda a, b: L.bce_from_logp(y, L.log_sigmoid(a) + L.log_sigmoid(b))
  loss, grads = jax.value_and_grad(f, argnums=(0, 1))(a_ctr, a_cvr)
  assert np.isfinite(loss)
  assert np.all(np.isfinite(grads[0])) and np.all(np.isfinite(grads[1]))
  # Row 0: -log(σ(-60)²) = 120 + 2·log1p(e^-60) ≈ 120;
  # row 1: -log(1 - σ(60)²) = -log(-expm1(-2·log1p(e^-60))) ≈ -log(2e^-60);
  # row 2: -log(1 - σ(30)σ(40)) ≈ -log(e^-30 + e^-40).
  expected = np.mean([120.0, -np.log(2 * np.log1p(np.exp(-60.0))), -np.logaddexp(-30.0, -40.0)])
  np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_log1mexp_matches_numpy_and_has_finite_grads():
  x = jnp.asarray([-1e-6, -0.1, -0.69, -0.7, -5.0, -50.0])
  np.testing.assert_allclose(
    L.log1mexp(x), np.log(-np.expm1(np.asarray(x, np.float64))), rtol=1e-5, atol=1e-20
  )
  g = jax.grad(lambda v: jnp.sum(L.log1mexp(v)))(x)
  assert np.all(np.isfinite(g))


def test_model_name_error_lists_allowed_values():
  with pytest.raises(ValueError, match=r"model.name='esmmm'.*allowed.*'esm2'"):
    registry.get("esmmm")


def test_registry_lists_every_model_papers_first():
  names = registry.names()
  assert names[:3] == ["esmm", "esmm_ns", "esm2"]
  assert {"base", "aman", "oversampling", "unbias", "division", "dnn", "dnn_os"} <= set(names)
  for name in names:
    cls = registry.get(name)
    assert cls.name == name and issubclass(cls, model_lib.Model)
  # A module of the package that is not a model is not a model name.
  with pytest.raises(ValueError, match=r"model.name='layers' is not a model"):
    registry.get("layers")


def test_paper_aliases_are_their_baselines():
  z = {k: jnp.asarray(v) for k, v in logits(seed=4).items()}
  rng = np.random.default_rng(5)
  click = jnp.asarray((rng.random(64) < 0.5).astype(np.float32))
  lab = {"click": click, "buy": click * jnp.asarray(rng.random(64) < 0.5, jnp.float32)}
  for alias, model in (("dnn", "base"), ("dnn_os", "oversampling")):
    a, b = registry.get(alias)(), registry.get(model)()
    assert a.towers == b.towers and a.hp == b.hp
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(a.loss(z, lab, key)[0], b.loss(z, lab, key)[0])
