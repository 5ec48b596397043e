"""UNBIAS (ESMM paper): BASE with clicked rows weighted by 1/pCTR of the independent CTR network
(pCTR floored at `unbias_min_pctr`, no gradient through the weight).

The paper cites rejection sampling with pCTR as rejection probability; weighting each clicked row
by 1/pCTR is its expectation (importance weighting) without discarding rows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from esmjax.common import hparams
from esmjax.models import base, registry


@dataclasses.dataclass(frozen=True)
class Hparams:
  unbias_min_pctr: float = hparams.field(
    0.01, "UNBIAS: pCTR floor of the 1/pCTR weights", gt=0, le=1
  )


@registry.register
class Unbias(base.Base):
  name = "unbias"
  order = 13
  Hparams = Hparams

  def cvr_weights(self, click, buy, log_probs, rng):
    pctr = jax.lax.stop_gradient(jnp.exp(log_probs["log_pctr"]))
    return click / jnp.maximum(pctr, self.hp.unbias_min_pctr)
