"""DIVISION (ESMM paper): independent CTR and CTCVR networks; pCVR = min(pCTCVR / pCTR, 1)."""

from __future__ import annotations

import jax.numpy as jnp

from esmjax.models import losses as L
from esmjax.models import model, registry


@registry.register
class Division(model.Model):
  name = "division"
  order = 14
  towers = (("ctr", "ctr"), ("ctcvr", "ctcvr"))

  def log_probs(self, z):
    l1, l13 = L.log_sigmoid(z["ctr"]), L.log_sigmoid(z["ctcvr"])
    return {"log_pctr": l1, "log_pcvr": jnp.minimum(l13 - l1, 0.0), "log_pctcvr": l13}

  def loss(self, z, labels, rng):
    click, buy = labels["click"], labels["buy"]
    ctr = L.bce_from_logits(click, z["ctr"])
    ctcvr = L.bce_from_logits(click * buy, z["ctcvr"])
    return ctr + ctcvr, {"ctr": ctr, "ctcvr": ctcvr}
