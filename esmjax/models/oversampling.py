"""OVERSAMPLING (ESMM paper): BASE with each click→buy positive weighted ×`oversample_k` (as if
copied k times)."""

from __future__ import annotations

import dataclasses

from esmjax.common import hparams
from esmjax.models import base, registry


@dataclasses.dataclass(frozen=True)
class Hparams:
  oversample_k: float = hparams.field(
    5.0, "OVERSAMPLING / DNN-OS: copies of each click→buy positive", ge=1
  )


@registry.register
class Oversampling(base.Base):
  name = "oversampling"
  order = 12
  Hparams = Hparams

  def cvr_weights(self, click, buy, log_probs, rng):
    return click * (1.0 + (self.hp.oversample_k - 1.0) * buy)
