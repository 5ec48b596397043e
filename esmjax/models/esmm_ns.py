"""ESMM-NS (ESMM paper): ESMM whose CTR and CVR towers do not share embedding tables."""

from __future__ import annotations

from esmjax.models import esmm, registry


@registry.register
class EsmmNs(esmm.Esmm):
  name = "esmm_ns"
  order = 1
  towers = (("ctr", "ctr"), ("cvr", "cvr"))
