"""BASE (ESMM paper): the CVR tower trained on clicked impressions only.

The CTCVR task follows the paper's protocol for non-ESMM models: an independently trained CTR
network of the same structure (its own embedding table) gives pCTR, and pCTCVR = pCTR·pCVR.
`Base` is also the click-space CVR baseline the others vary: AMAN, OVERSAMPLING and UNBIAS change
only which rows train the CVR tower and with what weight (`cvr_weights`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from esmjax.models import losses as L
from esmjax.models import model, registry


@registry.register
class Base(model.Model):
  name = "base"
  order = 10
  towers = (("ctr", "ctr"), ("cvr", "cvr"))

  def log_probs(self, z):
    return L.log_sigmoid_pair(z["ctr"], z["cvr"])

  def cvr_weights(self, click, buy, log_probs, rng):
    """Per-row weight of the CVR loss (0 = the row does not train the CVR tower)."""
    return click

  def loss(self, z, labels, rng):
    click, buy = labels["click"], labels["buy"]
    ctr = L.bce_from_logits(click, z["ctr"])
    w = self.cvr_weights(click, buy, self.log_probs(z), rng)
    # Normalised by the rows that train (not by w's sum), so a weighting changes the relative
    # pull of positives / sampled negatives as copying or sampling rows would.
    nll = jax.nn.softplus(z["cvr"]) - buy * click * z["cvr"]
    cvr = jnp.sum(w * nll) / jnp.maximum(jnp.sum(jnp.where(w > 0, 1.0, 0.0)), 1.0)
    return ctr + cvr, {"ctr": ctr, "cvr": cvr}
