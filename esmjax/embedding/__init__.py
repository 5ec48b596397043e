"""Sparse embedding tables: layout, engines (single-device, sharded) and row-wise optimizers.

May import: `esmjax.common` (the schema the tables are laid out from, hyperparameter
declarations); never `data` or `models` nor anything above.
"""
