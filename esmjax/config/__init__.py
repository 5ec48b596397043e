"""The run configuration: the default config assembled from the declarations of the models and
optimizers, and its validation before anything is read or compiled (`defaults`); what the shipped
configs share, their argument and the papers' schedule (`presets`); the keys that configs saved by
earlier versions lack (`compat`). The dotted-key walker and `ConfigError` live below every
package, in `esmjax.common.config_keys`.

May import: `esmjax.common` and the domain packages (`data`, `embedding`, `models`), whose
declarations it assembles; nothing that runs (core, training, serving).
"""
