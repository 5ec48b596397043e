"""esmjax: entire-space multi-task conversion-rate models (ESMM, ESM2) in JAX/Flax.

    import esmjax
    summary = esmjax.train(config, workdir="workdirs/quick")
    model = esmjax.load("workdirs/quick")
    preds = model.predict(summary["eval_dir"])

`import esmjax` is cheap on purpose: `train` and `load` import JAX on first use (module
`__getattr__`), so grain worker processes, which import the package, start nothing heavy.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["train", "load", "__version__"]

_LAZY = {"train": "esmjax.api", "load": "esmjax.api"}


def __getattr__(name: str):
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'esmjax' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
