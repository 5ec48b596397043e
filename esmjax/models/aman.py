"""AMAN (ESMM paper): BASE plus unclicked impressions sampled as CVR negatives at `aman_rate`."""

from __future__ import annotations

import dataclasses

import jax

from esmjax.common import hparams
from esmjax.models import base, registry


@dataclasses.dataclass(frozen=True)
class Hparams:
  aman_rate: float = hparams.field(
    0.1, "AMAN: fraction of unclicked impressions sampled as CVR negatives", gt=0, le=1
  )


@registry.register
class Aman(base.Base):
  name = "aman"
  order = 11
  Hparams = Hparams

  def cvr_weights(self, click, buy, log_probs, rng):
    sampled = jax.random.bernoulli(rng, self.hp.aman_rate, click.shape).astype(click.dtype)
    return click + (1.0 - click) * sampled
