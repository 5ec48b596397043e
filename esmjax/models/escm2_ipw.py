"""ESCM²-IPW (Wang et al., SIGIR 2022): ESMM plus a counterfactual CVR risk, inverse-propensity
weighted.

Structure as ESMM: shared embeddings, CTR and CVR towers, pCTCVR = pCTR·pCVR. The loss is

  total = w_ctr·L_CTR + w_cvr·R_IPW + w_ctcvr·L_CTCVR
  L_CTR   = mean_i BCE(click_i, pCTR_i)            L_CTCVR = mean_i BCE(click_i·buy_i, pCTCVR_i)
  R_IPW   = mean_i( click_i · e_i / p_i )           e_i = BCE(buy_i, pCVR_i)
  p_i     = stop_gradient(max(pCTR_i, escm2_min_pctr))

averaged over all impressions of the batch: the CVR error of each clicked row is weighted by the
inverse of its click propensity (from the model's own CTR tower), which makes the clicked-row
average an unbiased estimate of the entire-space CVR risk when the propensities are right. The
propensity carries no gradient (the CTR tower learns from L_CTR and L_CTCVR only) and is floored
at `escm2_min_pctr` (0.05, 1/p ≤ 20) so that rare clicks cannot dominate a batch.

Defaults follow PaddleRec's models/multitask/escm2 (cost = L_CTR + 0.5·R + 0.5·L_CTCVR:
counterfactual_w = global_w = 0.5); PaddleRec caps 1/p at 15 after scaling p by the batch's click
count, a form tied to its batch size, so the floor here is on pCTR itself.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from esmjax.common import hparams
from esmjax.models import losses as L
from esmjax.models import model, registry


@dataclasses.dataclass(frozen=True)
class Hparams:
  escm2_loss_weights: tuple[float, float, float] = hparams.field(
    (1.0, 0.5, 0.5),
    "ESCM²: w_ctr, w_cvr (counterfactual risk), w_ctcvr",
    ge=0,
    length=3,
    not_all_zero=True,
  )
  escm2_min_pctr: float = hparams.field(
    0.05, "ESCM²: propensity floor, 1/max(pCTR, floor) weights the clicked rows", gt=0, le=1
  )


@registry.register
class Escm2Ipw(model.Model):
  name = "escm2_ipw"
  order = 3
  towers = (("ctr", "shared"), ("cvr", "shared"))
  Hparams = Hparams

  def log_probs(self, z):
    return L.log_sigmoid_pair(z["ctr"], z["cvr"])

  def propensity(self, log_probs):
    """p_i = max(pCTR_i, floor), without gradient."""
    pctr = jnp.exp(log_probs["log_pctr"])
    return jax.lax.stop_gradient(jnp.maximum(pctr, self.hp.escm2_min_pctr))

  def cvr_risk(self, z, click, buy, propensity):
    """(R, {extra named losses}) — the counterfactual CVR risk and what else trains with it."""
    e = jax.nn.softplus(z["cvr"]) - buy * z["cvr"]  # BCE(buy, pCVR), per row
    return jnp.mean(click * e / propensity), {}

  def loss(self, z, labels, rng):
    lp = self.log_probs(z)
    click, buy = labels["click"], labels["buy"]
    w_ctr, w_cvr, w_ctcvr = self.hp.escm2_loss_weights
    ctr = L.bce_from_logits(click, z["ctr"])
    ctcvr = L.bce_from_logp(click * buy, lp["log_pctcvr"])
    risk, extra = self.cvr_risk(z, click, buy, self.propensity(lp))
    total = w_ctr * ctr + w_cvr * (risk + sum(extra.values())) + w_ctcvr * ctcvr
    return total, {"ctr": ctr, "cvr": risk, "ctcvr": ctcvr, **extra}
