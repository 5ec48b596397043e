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

Exit codes (esmjax/cli.py): 0 done, or stopped by SIGTERM / SIGINT after saving a checkpoint
(rerun to resume); 2 a user error (flags, config, data, workdir), one line on stderr; 3 the run
cannot go on (NaN/Inf loss, no readable checkpoint, a failed save), one line on stderr.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from esmjax import cli

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
flags.mark_flags_as_required(["config"])


def train(config, workdir: str) -> None:
  from esmjax import metrics_io, trainer

  logging.info("workdir: %s", os.path.abspath(workdir))
  s = trainer.train_and_evaluate(config, workdir)
  if s.get("preempted"):  # saved: exit 0 so schedulers requeue cleanly
    print(
      f"esmjax: {s['preempted']} received: stopped after step {s['steps']}/{s['total_steps']}, "
      f"checkpoint saved in {s['checkpoint_dir']}; run the same command again to resume",
      file=sys.stderr,
    )
    return
  median, peak = s["examples_per_sec_median_window"], s["examples_per_sec_peak_window"]
  print(
    f"\n{config.model.name}: {s['steps']} steps, {s['examples_per_sec']:.0f} examples/s over "
    f"the run's {s['train_seconds']:.1f}s of training (log windows: median {median:.0f}, "
    f"peak {peak:.0f}), workdir {workdir}\n" + metrics_io.metrics_table(s["metrics"])
  )


def evaluate(config, workdir: str) -> None:
  from esmjax import metrics_io, predict

  print(metrics_io.metrics_table(predict.evaluate_workdir(config, workdir)))


def export(config, workdir: str) -> None:
  from esmjax import export as export_lib

  path = _EXPORT_PATH.value or os.path.join(workdir, "export", f"{config.model.name}.jaxexport")
  sig = export_lib.export(workdir, path, batch_size=_EXPORT_BATCH.value or None, config=config)
  print(f"exported {sig['model']} (step {sig['step']}) to {path} and {path}.json")


def predict(config, workdir: str) -> None:
  from esmjax import config as config_lib
  from esmjax import predict as predict_lib

  if not _PREDICT_INPUT.value or not _PREDICT_OUTPUT.value:
    raise config_lib.ConfigError(
      "--mode=predict needs --predict_input=DATASET_DIR and --predict_output=FILE.csv"
    )
  n = predict_lib.predict_to_csv(config, workdir, _PREDICT_INPUT.value, _PREDICT_OUTPUT.value)
  print(f"wrote {n} predictions to {_PREDICT_OUTPUT.value}")


MODES = {"train": train, "evaluate": evaluate, "predict": predict, "export": export}


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}", cli.USER_ERROR)
  cli.quiet_libraries()
  # Imports after flag parsing: grain workers import the package, never this module's side effects.
  from esmjax import api, distributed
  from esmjax import config as config_lib

  config = _CONFIG.value
  workdir = _WORKDIR.value or api.default_workdir(config)
  with cli.exit_codes():
    config_lib.validate(config)
    distributed.maybe_initialize(config)
    MODES[_MODE.value](config, workdir)


def run():
  from esmjax import host_memory  # light: restarts with huge-page malloc before JAX is imported

  host_memory.use_huge_page_malloc()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
