"""Foundations every other package may use: what a dataset feeds a model (`schema`), declared
hyperparameters (`hparams`), dotted config keys and `ConfigError` (`config_keys`), absl flags
outside an absl app (`absl_flags`).

May import: nothing from esmjax (NumPy, ml_collections and absl only).
"""
