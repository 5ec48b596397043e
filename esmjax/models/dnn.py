"""DNN (ESM2 paper): the CVR network trained on clicked impressions, i.e. BASE under its name."""

from __future__ import annotations

from esmjax.models import base, registry


@registry.register
class Dnn(base.Base):
  name = "dnn"
  order = 20
