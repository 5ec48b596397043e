"""Sparse embedding tables: layout, engines (single-device, sharded) and row-wise optimizers."""
