"""ESMM (Ma et al., SIGIR 2018): entire-space CTR × CVR on shared embeddings.

pCTCVR = pCTR·pCVR; loss BCE(click, pCTR) + BCE(click∧buy, pCTCVR) over all impressions, so the
CVR tower is trained on the entire space through the product, never on clicked rows alone.
"""

from __future__ import annotations

from esmjax.models import losses as L
from esmjax.models import model, registry


@registry.register
class Esmm(model.Model):
  name = "esmm"
  order = 0
  towers = (("ctr", "shared"), ("cvr", "shared"))

  def log_probs(self, z):
    return L.log_sigmoid_pair(z["ctr"], z["cvr"])

  def loss(self, z, labels, rng):
    lp = self.log_probs(z)
    click, buy = labels["click"], labels["buy"]
    ctr = L.bce_from_logits(click, z["ctr"])
    ctcvr = L.bce_from_logp(click * buy, lp["log_pctcvr"])
    return ctr + ctcvr, {"ctr": ctr, "ctcvr": ctcvr}
