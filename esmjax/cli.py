"""The training command line (`esmjax/main.py` defines its flags): which errors end in which exit
code, and what each --mode does.

Exit codes (`esmjax.exits`): 0 done, or stopped by SIGTERM / SIGINT after saving a checkpoint
(rerun to resume); 2 a user error: flags, the --config file or its overrides, config values, data,
the workdir (a file, not writable, owned by another run, or holding another model's checkpoints);
3 the run cannot go on: a NaN/Inf loss, no readable checkpoint, a checkpoint that cannot be saved;
4 a file esmjax wrote and reads back (schema.json, a manifest, an export, ...) changed since.
Each error is one line on stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys

from absl import logging

from esmjax import exits


def _user_errors() -> tuple[type, ...]:
  from esmjax.common.schema import DatasetError
  from esmjax.config import defaults as config_lib
  from esmjax.core import outputs

  return config_lib.ConfigError, DatasetError, FileNotFoundError, outputs.OutputError


def _run_errors() -> tuple[type, ...]:
  from esmjax.checkpoints import checkpoint as ckpt_lib
  from esmjax.core import outputs
  from esmjax.core.guard import NonFiniteError

  return NonFiniteError, ckpt_lib.CheckpointError, outputs.WriteError


@contextlib.contextmanager
def exit_codes():
  """A user error -> exit 2, a run that cannot go on -> exit 3, each with its one line; so is an
  OS error of the machine (disk full, read-only file system, I/O error) wherever it is raised,
  naming the file. Anything else keeps its traceback (a bug to report). The error classes are
  imported only once an error happened: `esmjax.checkpoints.checkpoint` imports orbax and JAX."""
  try:
    yield
  except Exception as e:
    if isinstance(e, OSError) and e.errno in exits.MACHINE_ERRNOS:
      exits.fail(exits.describe_os_error(e), exits.CANNOT_GO_ON)
    with exits.exit_codes(_user_errors(), _run_errors()):
      raise


class QuietLibraries:
  """Drops INFO chatter of orbax / grain / jax from the console (warnings and errors still show)."""

  def filter(self, record) -> bool:
    noisy = any(p in record.pathname for p in ("/orbax/", "/grain/", "/jax/", "/jaxlib/"))
    return record.levelno >= 30 or not noisy


def quiet_libraries() -> None:
  logging.get_absl_handler().addFilter(QuietLibraries())
  logging.set_verbosity(logging.INFO)


# -- the modes: each runs on a validated config and prints its outcome -----------------------------


def train(config, workdir: str) -> None:
  from esmjax.evaluation import metrics_io
  from esmjax.training import trainer

  logging.info("workdir: %s", os.path.abspath(workdir))
  summary = trainer.train_and_evaluate(config, workdir)
  if summary.get("preempted"):  # saved: exit 0 so schedulers requeue cleanly
    print(
      f"esmjax: {summary['preempted']} received: stopped after step "
      f"{summary['steps']}/{summary['total_steps']}, checkpoint saved in "
      f"{summary['checkpoint_dir']}; run the same command again to resume",
      file=sys.stderr,
    )
    return
  if summary.get("already_finished"):
    print(
      f"esmjax: {workdir} already finished at step {summary['steps']}; nothing changed (its "
      "summary.json below). Raise train.num_steps / train.num_epochs to train on, or use another "
      "--workdir\n" + metrics_io.metrics_table(summary["metrics"])
    )
    return
  median, peak = summary["examples_per_sec_median_window"], summary["examples_per_sec_peak_window"]
  print(
    f"\n{config.model.name}: {summary['steps']} steps, {summary['examples_per_sec']:.0f} "
    f"examples/s over the run's {summary['train_seconds']:.1f}s of training (log windows: "
    f"median {median:.0f}, peak {peak:.0f}), workdir {workdir}\n"
    + metrics_io.metrics_table(summary["metrics"])
  )


def evaluate(config, workdir: str, step: int | None = None) -> None:
  from esmjax.evaluation import metrics_io
  from esmjax.serving import predict

  step, metrics = predict.evaluate_workdir(config, workdir, step)
  print(f"checkpoint step {step} of {workdir}\n" + metrics_io.metrics_table(metrics))


def predict(config, workdir: str, input_dir: str, output_csv: str, step: int | None = None) -> None:
  from esmjax.config import defaults as config_lib
  from esmjax.serving import predict as predict_lib

  if not input_dir or not output_csv:
    raise config_lib.ConfigError(
      "--mode=predict needs --predict_input=DATASET_DIR and --predict_output=FILE.csv"
    )
  meta = predict_lib.predict_to_csv(config, workdir, input_dir, output_csv, step)
  print(
    f"wrote {meta['rows']} predictions of checkpoint step {meta['checkpoint_step']} to "
    f"{output_csv} (and {output_csv}{predict_lib.META_SUFFIX})"
  )


def export(config, workdir: str, path: str, batch_size: int, step: int | None = None) -> None:
  """`path` "" = DIR/export/<model>.jaxexport; `batch_size` 0 = any (a symbolic dimension)."""
  from esmjax.serving import export as export_lib

  path = path or os.path.join(workdir, "export", f"{config.model.name}.jaxexport")
  sig = export_lib.export(workdir, path, batch_size=batch_size or None, config=config, step=step)
  print(f"exported {sig['model']} (step {sig['step']}) to {path} and {path}.json")
