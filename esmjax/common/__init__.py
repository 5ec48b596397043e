"""Foundations every other package may use: what a dataset feeds a model (`schema`), declared
hyperparameters (`hparams`), dotted config keys and `ConfigError` (`config_keys`), absl flags
outside an absl app (`absl_flags`), a model's input columns and their checks (`inputs`), the
digests that every file esmjax reads back is verified against (`digest`), and JAX's persistent
compilation cache (`compile_cache`).

May import: `esmjax.exits` at most (NumPy, ml_collections, absl, and JAX inside functions).
"""
