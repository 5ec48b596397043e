"""The command line's contract: every error a user can make, or a run can hit, ends in one line on
stderr (`esmjax: error: ...`, naming the flag / key / path) and a documented exit code.

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
