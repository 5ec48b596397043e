"""Models, one module each, on a registry (`esmjax.models.registry`): ESMM, ESMM-NS, ESM2,
ESCM²-IPW / -DR, AITM, the papers' baselines (base, aman, oversampling, unbias, division; dnn,
dnn_os), and the shared pieces: `model` (the `Model` base class every model fills in), `layers`
(field inputs, fused towers), `losses`. `base` is the ESMM paper's BASE model, not a base class.

May import: `esmjax.common` (hyperparameter declarations); never `data` or `embedding` (a model
reads a schema's attributes without importing the type) nor anything above.
"""
