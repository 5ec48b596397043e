"""ESCM²-DR (Wang et al., SIGIR 2022): ESCM² with a doubly robust counterfactual CVR risk.

As ESCM²-IPW (`escm2_ipw`), plus an imputation tower on the same shared input that predicts the
CVR error of every impression, ê_i = softplus(imputation logit_i) ≥ 0 (a BCE is ≥ 0):

  total  = w_ctr·L_CTR + w_cvr·(R_DR + L_IMP) + w_ctcvr·L_CTCVR
  R_DR   = mean_i( sg(ê_i) + click_i·(e_i − sg(ê_i)) / p_i )      e_i = BCE(buy_i, pCVR_i)
  L_IMP  = mean_i( click_i·(sg(e_i) − ê_i)² / p_i )
  p_i    = stop_gradient(max(pCTR_i, escm2_min_pctr))

sg = stop_gradient: R_DR trains the CVR tower with the imputed errors held fixed, and L_IMP trains
the imputation tower with the CVR errors held fixed (the joint form of DR-JL's alternating
updates); neither trains the CTR tower through the propensity. L_IMP is weighted with R_DR by
w_cvr, as PaddleRec's models/multitask/escm2 adds it to the counterfactual loss (defaults there:
w_cvr = w_ctcvr = 0.5). `predict_step` gives pCTR, pCVR and pCTCVR as ESMM does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from esmjax.models import escm2_ipw, registry


@registry.register
class Escm2Dr(escm2_ipw.Escm2Ipw):
  name = "escm2_dr"
  order = 4
  towers = (("ctr", "shared"), ("cvr", "shared"), ("imputation", "shared"))

  def cvr_risk(self, z, click, buy, propensity):
    e = jax.nn.softplus(z["cvr"]) - buy * z["cvr"]  # BCE(buy, pCVR), per row
    e_hat = jax.nn.softplus(z["imputation"])
    e_hat_fixed = jax.lax.stop_gradient(e_hat)
    risk = jnp.mean(e_hat_fixed + click * (e - e_hat_fixed) / propensity)
    imputation = jnp.mean(click * (jax.lax.stop_gradient(e) - e_hat) ** 2 / propensity)
    return risk, {"imputation": imputation}
