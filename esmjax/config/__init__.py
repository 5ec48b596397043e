"""The run configuration: the default config assembled from the declarations of the models and
optimizers, and its validation before anything is read or compiled (`defaults`); what the shipped
configs share, their argument and the papers' schedule (`presets`); the keys that configs saved by
earlier versions lack (`compat`). The dotted-key walker and `ConfigError` live below every
package, in `esmjax.common.config_keys`.

May import: `esmjax.common` and the domain packages (`data`, `embedding`, `models`), whose
declarations it assembles; nothing that runs (core, training, serving).
"""

# The names a config file uses (`from esmjax import config as config_lib`, flax-examples style).
from esmjax.config.defaults import (  # noqa: E402, F401
  ConfigError,
  check_devices,
  default_config,
  get_path,
  set_path,
  unknown_key,
  validate,
)
