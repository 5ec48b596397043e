r"""esmjax entry point: train (and evaluate), score a dataset, or export a trained model.

  python -m esmjax.main --config=configs/esm2.py [--config.train.num_epochs=2] [--workdir=DIR]
  python -m esmjax.main --config=configs/esm2.py --workdir=DIR --mode=predict \
      --predict_input=DATASET_DIR --predict_output=preds.csv
  python -m esmjax.main --config=configs/esm2.py --workdir=DIR --mode=export \
      --export_path=model.jaxexport

Modes: train (train, evaluate, checkpoint; resumes from DIR's latest readable checkpoint),
evaluate (the latest checkpoint, or --checkpoint_step, on data.eval_dir), predict (one CSV row per
input row, in input order, and FILE.json naming the checkpoint step), export (the checkpoint as
serialized StableHLO + a JSON signature; see esmjax/serving/export.py). evaluate / predict / export
never
fall back to an older checkpoint: one that cannot be read stops them (exit 3).
Any config key can be overridden: --config.model.name=esm2, --config.train.batch_size=8192, ...
Curves: python -m esmjax.plot DIR; TensorBoard: tensorboard --logdir DIR/tensorboard.

Exit codes (esmjax/exits.py): 0 done, or stopped by SIGTERM / SIGINT after saving a checkpoint
(rerun to resume); 2 a user error (flags, config, data, workdir), one line on stderr; 3 the run
cannot go on (NaN/Inf loss, no readable checkpoint, a failed save or write), one line on stderr;
4 a file esmjax wrote changed since (it does not match its digest: esmjax/common/digest.py), one
line
naming it; 130 interrupted (Ctrl-C) outside the training loop, one line on stderr.
"""

from esmjax import exits

if __name__ == "__main__":  # the command, not a module imported by tests or scripts
  exits.exit_on_interrupt()  # Ctrl-C from here on: one line, exit 130 (the imports take seconds)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from esmjax import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/esm2.py.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  "",
  "Run directory (metrics, checkpoints, summary). Default: workdirs/<model>-<UTC time>.",
)
_MODE = flags.DEFINE_enum(
  "mode", "train", ("train", "evaluate", "predict", "export"), "What to do."
)
_PREDICT_INPUT = flags.DEFINE_string("predict_input", "", "predict: dataset directory to score.")
_PREDICT_OUTPUT = flags.DEFINE_string("predict_output", "", "predict: CSV file to write.")
_EXPORT_PATH = flags.DEFINE_string(
  "export_path",
  "",
  "export: file to write (and FILE.json, its signature). Default: DIR/export/<model>.jaxexport.",
)
_EXPORT_BATCH = flags.DEFINE_integer(
  "export_batch_size", 0, "export: fixed batch size; 0 = any (symbolic batch dimension)."
)
_CHECKPOINT_STEP = flags.DEFINE_integer(
  "checkpoint_step",
  -1,
  "evaluate / predict / export: the checkpoint step to use; -1 = the latest. Never replaced by "
  "another: a checkpoint that cannot be read is an error.",
)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    exits.fail(f"unexpected arguments: {argv[1:]}", exits.USER_ERROR)
  cli.quiet_libraries()
  # Imports after flag parsing: grain workers import the package, never this module's side effects.
  from esmjax import api
  from esmjax.common import compile_cache
  from esmjax.config import defaults as config_lib
  from esmjax.core import distributed

  config = _CONFIG.value
  workdir = _WORKDIR.value or api.default_workdir(config)
  with cli.exit_codes():
    config_lib.validate(config)
    distributed.maybe_initialize(config)
    compile_cache.enable(config)  # before anything compiles
    step = None if _CHECKPOINT_STEP.value < 0 else _CHECKPOINT_STEP.value
    if _MODE.value == "predict":
      cli.predict(config, workdir, _PREDICT_INPUT.value, _PREDICT_OUTPUT.value, step)
    elif _MODE.value == "export":
      cli.export(config, workdir, _EXPORT_PATH.value, _EXPORT_BATCH.value, step)
    elif _MODE.value == "evaluate":
      cli.evaluate(config, workdir, step)
    else:
      cli.train(config, workdir)


def run():
  from esmjax.core import (
    host_memory,  # light: restarts with huge-page malloc before JAX is imported
  )

  exits.exit_on_interrupt()  # (again, for callers of run() that imported this module)
  with exits.interrupts():  # Ctrl-C while importing, parsing, reading or compiling: one line
    host_memory.use_huge_page_malloc()
    app.run(main, flags_parser=exits.parse_flags)


if __name__ == "__main__":
  run()
