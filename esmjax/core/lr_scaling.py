"""Learning rates scaled with the batch size (config keys optimizer.lr_batch_scaling,
optimizer.lr_reference_batch, optimizer.lr_scale_tables).

The configured learning rates (optimizer.learning_rate for the towers, embedding.learning_rate for
the tables) are the ones tuned at `lr_reference_batch` rows; at batch B they are multiplied by

  none: 1      linear: B / reference      sqrt: sqrt(B / reference).

A batch 16 times larger takes 16 times fewer steps per epoch; with the rates tuned at the small
batch the model trains less per epoch. Adam and Adagrad normalise the gradient's scale away, so
the step size is the learning rate itself and only a larger rate makes up for the fewer steps
(experiments/results/large_batch.md measures which scaling keeps the quality, on towers and on
tables). At the reference batch every mode is the configured rates exactly.
"""

from __future__ import annotations

import math

SCALINGS = ("none", "linear", "sqrt")  # values of optimizer.lr_batch_scaling


def factor(config) -> float:
  """The multiplier of the learning rates for `config.train.batch_size` (1.0 for 'none', and for
  configs saved before these keys existed)."""
  opt = config.optimizer
  mode = opt.get("lr_batch_scaling", "none")
  if mode not in SCALINGS:
    raise ValueError(f"optimizer.lr_batch_scaling={mode!r} is not allowed; allowed: {SCALINGS}")
  if mode == "none":
    return 1.0
  ratio = int(config.train.batch_size) / int(opt.get("lr_reference_batch", 1024))
  return ratio if mode == "linear" else math.sqrt(ratio)


def learning_rates(config) -> tuple[float, float]:
  """(tower learning rate, table learning rate) in effect for `config`'s batch size."""
  f = factor(config)
  tables = config.embedding.get("learning_rate", 0.0)
  scale_tables = config.optimizer.get("lr_scale_tables", True)
  return config.optimizer.learning_rate * f, tables * (f if scale_tables else 1.0)


def describe(config) -> str:
  """One line for the run's log: the scaling and the rates in effect."""
  tower, tables = learning_rates(config)
  opt = config.optimizer
  return (
    f"learning rates at batch {int(config.train.batch_size)}: towers {tower:.4g}, tables "
    f"{tables:.4g} (optimizer.lr_batch_scaling={opt.get('lr_batch_scaling', 'none')!r}, "
    f"reference batch {int(opt.get('lr_reference_batch', 1024))}, "
    f"tables scaled: {bool(opt.get('lr_scale_tables', True))})"
  )
