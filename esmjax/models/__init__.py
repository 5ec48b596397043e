"""Models, one module each, on a registry (`esmjax.models.registry`): ESMM, ESMM-NS, ESM2,
ESCM²-IPW / -DR, AITM, the papers' baselines (base, aman, oversampling, unbias, division; dnn,
dnn_os), and the shared pieces: `model` (the `Model` base class), `layers` (field inputs, fused
towers), `losses`."""
