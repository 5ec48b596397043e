"""Exit codes and one-line errors of every esmjax command line: `python -m esmjax.main` and the
converters `python -m esmjax.data.aliccp` / `python -m esmjax.data.csv_ingest`.

  0  done (training: also stopped by SIGTERM / SIGINT after saving a checkpoint; rerun to resume)
  2  a user error: flags, the --config file or its overrides, config values, input files or
     directories, the output or work directory
  3  the run cannot go on: a NaN/Inf loss, no readable checkpoint, a failed save or write
     (disk full, read-only file system, I/O error)
  4  a file esmjax wrote and reads back changed since (it does not match its digest), has no
     digest, or is named by a path outside its directory (`esmjax.common.digest.IntegrityError`):
     the
     line names the file and how to regenerate it
  130 interrupted by Ctrl-C, outside the training loop (which saves a checkpoint and exits 0)

An error a user can make, or a run can hit, ends in one line on stderr (`esmjax: error: ...`,
naming the flag / key / path); anything else keeps its traceback (a bug to report).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from typing import NoReturn

USER_ERROR = 2
CANNOT_GO_ON = 3
CHANGED_FILE = 4
INTERRUPTED = 130  # the shell's code for a SIGINT (128 + 2)
# OS errors of the machine rather than of the command: the run cannot go on, whatever file it was.
MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG)
# Errors about a path the user named: missing, of the wrong kind, or not theirs to write.
PATH_ERRORS = (
  FileNotFoundError,
  FileExistsError,
  NotADirectoryError,
  IsADirectoryError,
  PermissionError,
)


def describe_os_error(e: OSError) -> str:
  """`<file>: <strerror> (<ERRNO>)`, e.g. `/w/metrics.jsonl: No space left on device (ENOSPC)`."""
  code = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else ""
  where = f"{e.filename}: " if e.filename else ""
  return f"{where}{e.strerror or e} ({code})"


INTERRUPTED_LINE = (
  "esmjax: interrupted (Ctrl-C); rerun the command (training resumes from its last checkpoint)"
)
# Temporary files being written (`esmjax.core.outputs`): removed when Ctrl-C ends the process.
TEMPORARIES: set[str] = set()


def exit_on_interrupt() -> None:
  """Ctrl-C (SIGINT) -> one line on stderr and exit 130, from the first line of `esmjax.main` on.

  The handler exits at once instead of raising KeyboardInterrupt: raised while libraries import
  or read, that exception prints a traceback of hundreds of lines, or is swallowed by a library's
  catch-all and the command carries on as if nothing happened. A training run replaces it with
  its own (`loop.preemption`: finish the dispatch, save, exit 0) while it trains; a second Ctrl-C
  comes back here. A SIGINT ignored by the parent (a background job) stays ignored.
  """
  import signal

  if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, _interrupted)


def _interrupted(signum, frame) -> None:
  for path in list(TEMPORARIES):
    with contextlib.suppress(OSError):
      os.remove(path)
  os.write(2, (INTERRUPTED_LINE + "\n").encode())
  os._exit(INTERRUPTED)  # no interpreter shutdown: other threads' tracebacks would follow


@contextlib.contextmanager
def interrupts():
  """A KeyboardInterrupt raised anyway (a handler that raises it, restored by a library) -> the
  same one line and exit 130."""
  try:
    yield
  except KeyboardInterrupt:
    _interrupted(2, None)


def fail(message: object, code: int) -> NoReturn:
  text = " ".join(str(message).split("\n")).strip() or type(message).__name__
  print(f"esmjax: error: {text}", file=sys.stderr)
  sys.exit(code)


@contextlib.contextmanager
def exit_codes(user_errors: tuple[type, ...], run_errors: tuple[type, ...] = ()):
  """An exception of `user_errors` -> exit 2, else of `run_errors` -> exit 3, each with its one
  line; an `IntegrityError` (a file that changed after esmjax wrote it) -> exit 4 in every
  command; anything else keeps its traceback."""
  try:
    yield
  except Exception as e:
    from esmjax.common.digest import IntegrityError

    if isinstance(e, IntegrityError):
      fail(e, CHANGED_FILE)
    if isinstance(e, user_errors):
      fail(e, USER_ERROR)
    if isinstance(e, run_errors):
      fail(e, CANNOT_GO_ON)
    raise


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of `--name=V` / `--name V` in argv (the last one), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _override_error(argv: list[str], error: Exception, path: str | None, flag: str) -> str | None:
  """Names the first `--<flag>.a.b=V` override that is not a key of the config file at `path`, or
  whose value does not parse."""
  import ml_collections
  from ml_collections.config_flags import config_flags

  from esmjax.common import config_keys

  overrides = [a for a in argv[1:] if a.startswith(f"--{flag}.")]
  if not overrides:
    return None
  if path is None:
    return f"{overrides[0]} needs --{flag}=FILE, the config file whose key it overrides"
  try:
    base = config_flags.ConfigFileFlagParser(flag, lock_config=False).parse(path)
  except Exception:  # the file itself fails: the caller names that error
    return None
  if not isinstance(base, ml_collections.ConfigDict):  # unreadable, or not a ConfigDict
    return None
  text = str(error)
  for arg in overrides:
    name, _, value = arg.partition("=")
    key = name[len(f"--{flag}.") :]
    why = config_keys.unknown_key(base, key)
    if why:
      return f"{why} (from {name})"
    # absl names the flag whose value did not parse, and the value: an override given twice is
    # quoted with the value that failed, not the other one.
    if f"flag {name}={value}:" in text or (name in text and f"{name}=" not in text):
      kind = type(config_keys.get_path(base, key)).__name__
      article = "an" if kind[0] in "aeiou" else "a"
      return f"{name}={value!r} is not a valid value: config key {key} takes {article} {kind}"
  return None


def _config_file_error(error: Exception) -> str:
  """absl's error for a config file whose get_config raised carries that call's whole traceback,
  flattened into its message: keep the flag and the error's own last line."""
  text = str(error)
  marker = "Error whilst parsing config file:"
  if marker not in text or "Traceback" not in text:
    return text
  flag = text.split(marker, 1)[0].strip().rstrip(":").removeprefix("flag ")  # absl's "flag --x"
  last = text.strip().splitlines()[-1].strip()
  # The flattened traceback's last frame ends with "<Type>Error: <message>".
  found = re.findall(r"(\b[A-Z]\w*(?:Error|Exception)\b: .*)$", last)
  return f"{flag}: {found[-1] if found else last[-300:]}"


def parse_flags(argv: list[str], config_flag: str = "config") -> list[str]:
  """absl's flag parsing (for `app.run(..., flags_parser=parse_flags)`), with every failure turned
  into one line and exit 2: a missing or broken config file (of the flag `config_flag`, where the
  program defines it), an unknown config key, a value that does not parse, an unknown flag."""
  from absl import flags

  path = _flag_value(argv, config_flag)
  if path is not None:
    file = path.split(":", 1)[0]
    if not os.path.isfile(file):
      what = "is a directory, not a config file" if os.path.isdir(file) else "no such file"
      fail(f"--{config_flag}={path}: {what}", USER_ERROR)
  try:
    rest = flags.FLAGS(argv)
    config = flags.FLAGS[config_flag].value if config_flag in flags.FLAGS else None
    if config is not None:
      config.get("model")  # a config whose loading failed raises its error here
    return rest
  except SyntaxError as e:
    fail(f"--{config_flag}={path}: {e.msg} (line {e.lineno}: {(e.text or '').strip()})", USER_ERROR)
  except flags.Error as e:
    fail(_override_error(argv, e, path, config_flag) or _config_file_error(e), USER_ERROR)
  except Exception as e:  # raised while the config file ran, or while an override was applied
    message = _override_error(argv, e, path, config_flag)
    if message is None:
      detail = str(e).strip().splitlines()[-1] if str(e).strip() else ""
      message = f"--{config_flag}={path}: {type(e).__name__}: {detail}"
    fail(message, USER_ERROR)
