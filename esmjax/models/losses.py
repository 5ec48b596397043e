"""Log-space probabilities and losses (no epsilon clipping that bends gradients; docs/design.md,
Models).

Products of probabilities are sums of log-sigmoids; log(1 − p) for p = exp(lp) is `log1mexp`.
Both branches of every `where` get safe inputs, so no NaN leaks into gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_LN2 = 0.6931471805599453


def log_sigmoid(a):
  return -jax.nn.softplus(-a)


def log1mexp(x):
  """log(1 − eˣ) for x ≤ 0, stable everywhere (Mächler 2012): expm1 near 0, log1p far from it."""
  x = jnp.minimum(x, 0.0)
  near = x > -_LN2
  x_near = jnp.where(near, x, -1.0)  # safe dummy inputs keep the unused branch finite
  x_far = jnp.where(near, -1.0, x)
  return jnp.where(near, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far)))


def bce_from_logp(y, logp, weights=None):
  """Mean binary cross-entropy given log p (log-space; p need not come from one logit)."""
  nll = -(y * logp + (1.0 - y) * log1mexp(logp))
  return _wmean(nll, weights)


def bce_from_logits(y, a, weights=None):
  nll = jax.nn.softplus(a) - y * a  # = -(y log σ(a) + (1-y) log(1-σ(a)))
  return _wmean(nll, weights)


def _wmean(x, w):
  if w is None:
    return jnp.mean(x)
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def log_sigmoid_pair(a_ctr, a_cvr) -> dict:
  """{log_pctr, log_pcvr, log_pctcvr} of the CTR × CVR factorisation from the two logits."""
  l1, l3 = log_sigmoid(a_ctr), log_sigmoid(a_cvr)
  return {"log_pctr": l1, "log_pcvr": l3, "log_pctcvr": l1 + l3}


def log_mix(log_a, log_b, log_wa, log_wb):
  """log(wa·a + wb·b) from logs (ESM2's pCVR = y2·y3 + (1 − y2)·y4)."""
  return jnp.logaddexp(log_wa + log_a, log_wb + log_b)
