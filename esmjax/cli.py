"""The command line's contract and its modes (`esmjax/main.py` defines the flags).

Every error a user can make, or a run can hit, ends in one line on stderr (`esmjax: error: ...`,
naming the flag / key / path) and a documented exit code:

  0  done, or stopped by SIGTERM / SIGINT after saving a checkpoint (rerun to resume)
  2  a user error: flags, the --config file or its overrides, config values, data, the workdir
     (a file, not writable, owned by another run, or holding another model's checkpoints)
  3  the run cannot go on: a NaN/Inf loss, no readable checkpoint, a checkpoint that cannot be saved
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

from absl import flags, logging

USER_ERROR = 2
CANNOT_GO_ON = 3


def fail(message: object, code: int) -> NoReturn:
  text = " ".join(str(message).split("\n")).strip() or type(message).__name__
  print(f"esmjax: error: {text}", file=sys.stderr)
  sys.exit(code)


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of `--name=V` / `--name V` in argv (the last one), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _config_override_error(argv: list[str], error: Exception) -> str | None:
  """Names the first `--config.a.b=V` override that is not a key, or whose value does not parse."""
  from esmjax import config as config_lib

  base = config_lib.default_config()
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    flag, _, value = arg.partition("=")
    key = flag[len("--config.") :]
    why = config_lib.unknown_key(base, key)
    if why:
      return f"{why} (from {flag})"
    if flag in str(error):  # absl names the flag whose value did not parse
      kind = type(config_lib.get_path(base, key)).__name__
      article = "an" if kind[0] in "aeiou" else "a"
      return f"{flag}={value!r} is not a valid value: config key {key} takes {article} {kind}"
  return None


def parse_flags(argv: list[str], config_flag: str = "config") -> list[str]:
  """absl's flag parsing (for `app.run(..., flags_parser=parse_flags)`), with every failure turned
  into one line and exit 2: a missing or broken config file, an unknown config key, a value that
  does not parse, an unknown flag."""
  path = _flag_value(argv, config_flag)
  if path is not None:
    file = path.split(":", 1)[0]
    if not os.path.isfile(file):
      what = "is a directory, not a config file" if os.path.isdir(file) else "no such file"
      fail(f"--{config_flag}={path}: {what}", USER_ERROR)
  try:
    rest = flags.FLAGS(argv)
    config = flags.FLAGS[config_flag].value
    if config is not None:
      config.get("model")  # a config whose loading failed raises its error here
    return rest
  except SyntaxError as e:
    fail(f"--{config_flag}={path}: {e.msg} (line {e.lineno}: {(e.text or '').strip()})", USER_ERROR)
  except flags.Error as e:
    fail(_config_override_error(argv, e) or e, USER_ERROR)
  except Exception as e:  # raised while the config file ran, or while an override was applied
    message = _config_override_error(argv, e)
    if message is None:
      detail = str(e).strip().splitlines()[-1] if str(e).strip() else ""
      message = f"--{config_flag}={path}: {type(e).__name__}: {detail}"
    fail(message, USER_ERROR)


def _user_errors() -> tuple[type, ...]:
  from esmjax import config as config_lib
  from esmjax.schema import DatasetError

  return config_lib.ConfigError, DatasetError, FileNotFoundError


def _run_errors() -> tuple[type, ...]:
  from esmjax import checkpoint as ckpt_lib
  from esmjax.loop.guard import NonFiniteError

  return NonFiniteError, ckpt_lib.CheckpointError


@contextlib.contextmanager
def exit_codes():
  """A user error -> exit 2, a run that cannot go on -> exit 3, each with its one line; anything
  else keeps its traceback (a bug to report)."""
  try:
    yield
  except Exception as e:
    if isinstance(e, _user_errors()):
      fail(e, USER_ERROR)
    if isinstance(e, _run_errors()):
      fail(e, CANNOT_GO_ON)
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
  from esmjax import metrics_io, trainer

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
  median, peak = summary["examples_per_sec_median_window"], summary["examples_per_sec_peak_window"]
  print(
    f"\n{config.model.name}: {summary['steps']} steps, {summary['examples_per_sec']:.0f} "
    f"examples/s over the run's {summary['train_seconds']:.1f}s of training (log windows: "
    f"median {median:.0f}, peak {peak:.0f}), workdir {workdir}\n"
    + metrics_io.metrics_table(summary["metrics"])
  )


def evaluate(config, workdir: str) -> None:
  from esmjax import metrics_io, predict

  print(metrics_io.metrics_table(predict.evaluate_workdir(config, workdir)))


def predict(config, workdir: str, input_dir: str, output_csv: str) -> None:
  from esmjax import config as config_lib
  from esmjax import predict as predict_lib

  if not input_dir or not output_csv:
    raise config_lib.ConfigError(
      "--mode=predict needs --predict_input=DATASET_DIR and --predict_output=FILE.csv"
    )
  n = predict_lib.predict_to_csv(config, workdir, input_dir, output_csv)
  print(f"wrote {n} predictions to {output_csv}")


def export(config, workdir: str, path: str, batch_size: int) -> None:
  """`path` "" = DIR/export/<model>.jaxexport; `batch_size` 0 = any (a symbolic dimension)."""
  from esmjax import export as export_lib

  path = path or os.path.join(workdir, "export", f"{config.model.name}.jaxexport")
  sig = export_lib.export(workdir, path, batch_size=batch_size or None, config=config)
  print(f"exported {sig['model']} (step {sig['step']}) to {path} and {path}.json")
