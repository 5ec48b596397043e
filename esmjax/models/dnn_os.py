"""DNN-OS (ESM2 paper): DNN with click→buy positives oversampled (OVERSAMPLING under its name)."""

from __future__ import annotations

from esmjax.models import oversampling, registry


@registry.register
class DnnOs(oversampling.Oversampling):
  name = "dnn_os"
  order = 21
