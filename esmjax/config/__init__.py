"""The run configuration: the default config assembled from the declarations of the models and
optimizers, and its validation before anything is read or compiled (`defaults`). The dotted-key
walker and `ConfigError` live below every package, in `esmjax.common.config_keys`.

May import: `esmjax.common` and the domain packages (`data`, `embedding`, `models`), whose
declarations it assembles; nothing that runs (core, training, serving).
"""
