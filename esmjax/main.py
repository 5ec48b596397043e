r"""esmjax entry point: train (and evaluate), score a dataset, or export a trained model.

  python -m esmjax.main --config=configs/esm2.py [--config.train.num_epochs=2] [--workdir=DIR]
  python -m esmjax.main --config=configs/esm2.py --workdir=DIR --mode=predict \
      --predict_input=DATASET_DIR --predict_output=preds.csv
  python -m esmjax.main --config=configs/esm2.py --workdir=DIR --mode=export \
      --export_path=model.jaxexport

Modes: train (train, evaluate, checkpoint; resumes from DIR's latest checkpoint), evaluate (the
latest checkpoint on data.eval_dir), predict (one CSV row per input row, in input order), export
(the latest checkpoint as serialized StableHLO + a JSON signature; see esmjax/export.py).
Any config key can be overridden: --config.model.name=esm2, --config.train.batch_size=8192, ...
Curves: python -m esmjax.plot DIR; TensorBoard: tensorboard --logdir DIR/tensorboard.

Exit codes: 0 done, or stopped by SIGTERM / SIGINT after saving a checkpoint (rerun to resume);
2 a user error (config, data, a workdir of another model), one line on stderr; 3 the run cannot go
on (NaN/Inf loss, no readable checkpoint), one line on stderr.
"""

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "evaluate", "predict", "export")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/esm2.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Run directory (metrics, checkpoints, summary). "
                               "Default: workdirs/<model>-<UTC time>.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_PREDICT_INPUT = flags.DEFINE_string("predict_input", "", "predict: dataset directory to score.")
_PREDICT_OUTPUT = flags.DEFINE_string("predict_output", "", "predict: CSV file to write.")
_EXPORT_PATH = flags.DEFINE_string("export_path", "", "export: file to write (and FILE.json, its "
                                   "signature). Default: DIR/export/<model>.jaxexport.")
_EXPORT_BATCH = flags.DEFINE_integer("export_batch_size", 0, "export: fixed batch size; 0 = any "
                                     "(symbolic batch dimension).")
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
      if summary.get("preempted"):  # SIGTERM / SIGINT: saved; exit 0 so schedulers requeue cleanly
        print(f"esmjax: {summary['preempted']} received: stopped after step {summary['steps']}/"
              f"{summary['total_steps']}, checkpoint saved in {summary['checkpoint_dir']}; run the same "
              "command again to resume", file=sys.stderr)
        return
      print(f"\n{config.model.name}: {summary['steps']} steps, {summary['examples_per_sec']:.0f} "
            f"examples/s, workdir {workdir}\n" + trainer.metrics_table(summary["metrics"]))
    elif _MODE.value == "evaluate":
      from esmjax import predict

      m = predict.evaluate_workdir(config, workdir)
      from esmjax import trainer

      print(trainer.metrics_table(m))
    elif _MODE.value == "export":
      from esmjax import export

      path = _EXPORT_PATH.value or os.path.join(workdir, "export", f"{config.model.name}.jaxexport")
      sig = export.export(workdir, path, batch_size=_EXPORT_BATCH.value or None, config=config)
      print(f"exported {sig['model']} (step {sig['step']}) to {path} and {path}.json")
    else:
      from esmjax import predict

      if not _PREDICT_INPUT.value or not _PREDICT_OUTPUT.value:
        raise config_lib.ConfigError("--mode=predict needs --predict_input=DATASET_DIR and "
                                     "--predict_output=FILE.csv")
      n = predict.predict_to_csv(config, workdir, _PREDICT_INPUT.value, _PREDICT_OUTPUT.value)
      print(f"wrote {n} predictions to {_PREDICT_OUTPUT.value}")
  except (config_lib.ConfigError, ds_lib.DatasetError, FileNotFoundError) as e:
    # A user mistake (bad config, missing data, a workdir of another model) gets one clear line.
    print(f"esmjax: error: {e}", file=sys.stderr)
    sys.exit(2)
  except (FloatingPointError, RuntimeError) as e:
    # The NaN guard (trainer.NonFiniteError) and unreadable checkpoints (checkpoint.CheckpointError):
    # the run cannot go on, and the message says why; anything else keeps its traceback.
    from esmjax import checkpoint
    from esmjax import trainer

    if not isinstance(e, (trainer.NonFiniteError, checkpoint.CheckpointError)):
      raise
    print(f"esmjax: error: {e}", file=sys.stderr)
    sys.exit(3)


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
  from esmjax import distributed  # light: restarts with huge-page malloc before JAX is imported

  distributed.use_huge_page_malloc()
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
