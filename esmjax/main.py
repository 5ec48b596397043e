r"""esmjax entry point: train (and evaluate), or score a dataset with a trained model.

  python -m esmjax.main --config=configs/esm2.py [--config.train.num_epochs=2] [--workdir=DIR]
  python -m esmjax.main --config=configs/esm2.py --workdir=DIR --mode=predict \
      --predict_input=DATASET_DIR --predict_output=preds.csv

Modes: train (train, evaluate, checkpoint; resumes from DIR's latest checkpoint), evaluate (the
latest checkpoint on data.eval_dir), predict (one CSV row per input row, in input order).
"""

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "evaluate", "predict")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/esm2.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Run directory (metrics, checkpoints, summary). "
                               "Default: workdirs/<model>-<UTC time>.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_PREDICT_INPUT = flags.DEFINE_string("predict_input", "", "predict: dataset directory to score.")
_PREDICT_OUTPUT = flags.DEFINE_string("predict_output", "", "predict: CSV file to write.")
flags.mark_flags_as_required(["config"])


def _default_workdir(config) -> str:
  return os.path.join("workdirs", f"{config.model.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")


class _QuietLibraries:
  """Drops INFO chatter of orbax / grain / jax from the console (warnings and errors still show)."""

  def filter(self, record) -> bool:
    noisy = any(p in record.pathname for p in ("/orbax/", "/grain/", "/jax/", "/jaxlib/"))
    return record.levelno >= 30 or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  global _FLAGS_PARSED
  _FLAGS_PARSED = True
  logging.get_absl_handler().addFilter(_QuietLibraries())
  logging.set_verbosity(logging.INFO)
  config = _CONFIG.value
  # Imports after flag parsing: grain workers import the package, never this module's side effects.
  from esmjax import config as config_lib
  from esmjax import distributed
  from esmjax.data import dataset as ds_lib

  workdir = _WORKDIR.value or _default_workdir(config)
  try:
    config_lib.validate(config)
    distributed.maybe_initialize(config)
    if _MODE.value == "train":
      from esmjax import trainer

      logging.info("workdir: %s", os.path.abspath(workdir))
      summary = trainer.train_and_evaluate(config, workdir)
      print(f"\n{config.model.name}: {summary['steps']} steps, {summary['examples_per_sec']:.0f} "
            f"examples/s, workdir {workdir}\n" + trainer.metrics_table(summary["metrics"]))
    elif _MODE.value == "evaluate":
      from esmjax import predict

      m = predict.evaluate_workdir(config, workdir)
      from esmjax import trainer

      print(trainer.metrics_table(m))
    else:
      from esmjax import predict

      if not _PREDICT_INPUT.value or not _PREDICT_OUTPUT.value:
        raise config_lib.ConfigError("--mode=predict needs --predict_input=DATASET_DIR and "
                                     "--predict_output=FILE.csv")
      n = predict.predict_to_csv(config, workdir, _PREDICT_INPUT.value, _PREDICT_OUTPUT.value)
      print(f"wrote {n} predictions to {_PREDICT_OUTPUT.value}")
  except (config_lib.ConfigError, ds_lib.DatasetError, FileNotFoundError) as e:
    # A user mistake gets one clear line, not a traceback.
    print(f"esmjax: error: {e}", file=sys.stderr)
    sys.exit(2)


_FLAGS_PARSED = False  # set when main() starts: errors after that are not flag-parsing errors


def _unknown_key_message(argv) -> str | None:
  """Names the first `--config.a.b=` override whose key does not exist, with the allowed keys."""
  from esmjax import config as config_lib

  base = config_lib.default_config()
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    path = arg.split("=", 1)[0][len("--config."):].split(".")
    node = base
    for i, part in enumerate(path):
      if not hasattr(node, "keys") or part not in node:
        parent = ".".join(path[:i]) or "config"
        allowed = sorted(node.keys()) if hasattr(node, "keys") else []
        return (f"unknown config key {'.'.join(path[:i + 1])!r} (from {arg.split('=')[0]}); "
                f"keys of {parent}: {allowed}")
      node = node[part]
  return None


def run():
  try:
    app.run(main)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # Raised while absl parses --config.* overrides: name the key instead of a traceback.
    if _FLAGS_PARSED:
      raise
    msg = _unknown_key_message(sys.argv)
    if msg is None and not any(a.startswith("--config") for a in sys.argv):
      raise
    print(f"esmjax: error: {msg or f'bad --config override: {e}'}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
