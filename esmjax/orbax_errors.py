"""What went wrong under orbax, said once: the OS error behind a failed save, and quiet otherwise.

A checkpoint save that fails in orbax's background threads surfaces as an exception whose chain
(or tensorstore's message, `os_error_code=28`) holds the OS error; `describe` names it as
'ENOSPC (No space left on device)'. Meanwhile orbax logs the same failure once per thread with a
traceback, and tensorstore callbacks raise 'Event loop is closed' into the interpreter's
unraisable hook until exit: hundreds of lines that would bury the one that matters. The
`esmjax.checkpoint.Checkpointer` raises that one line itself, so it installs the filters here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys

# The OS errors of a write that fails however often it is retried.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")  # how tensorstore reports an errno


def errno_of(error: BaseException | None) -> int | None:
  """The errno behind `error`: an OSError's, or tensorstore's os_error_code, along the chain."""
  seen, todo = set(), [error]
  while todo:
    e = todo.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno:
      return int(e.errno)
    m = _OS_ERROR_CODE.search(str(e))
    if m:
      return int(m.group(1))
    todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
  return None


def describe(error: BaseException) -> str:
  """'EFBIG (File too large)'; the error's type and first line when no errno is behind it."""
  code = errno_of(error)
  if code is not None:
    return f"{errno.errorcode.get(code, f'errno {code}')} ({os.strerror(code)})"
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


class _WriteErrorLogs(logging.Filter):
  """Drops orbax's error records (with tracebacks) of a write that failed with a WRITE_ERRNOS."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or "/orbax/" not in record.pathname:
      return True
    code = errno_of(record.exc_info[1]) if record.exc_info else None
    text = record.getMessage()
    if code is None:
      m = _OS_ERROR_CODE.search(text)
      code = int(m.group(1)) if m else next((c for c in WRITE_ERRNOS if os.strerror(c) in text), None)
    return code not in WRITE_ERRNOS


_FILTER = _WriteErrorLogs()


def drop_write_error_logs() -> None:
  """Installs the filter on absl's logger (where orbax logs), once per process."""
  logger = logging.getLogger("absl")
  if _FILTER not in logger.filters:
    logger.addFilter(_FILTER)


def _without_closed_loop(previous):
  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
      previous(unraisable)

  hook.drops_closed_loop = True
  return hook


@contextlib.contextmanager
def quiet_closed_loop():
  """Drops 'Event loop is closed' unraisable errors inside the block (an unreadable checkpoint's)."""
  previous = sys.unraisablehook
  sys.unraisablehook = _without_closed_loop(previous)
  try:
    yield
  finally:
    sys.unraisablehook = previous


def quiet_closed_loop_from_now() -> None:
  """Drops them until exit (a failed save's callbacks keep firing after the save gave up)."""
  if not getattr(sys.unraisablehook, "drops_closed_loop", False):
    sys.unraisablehook = _without_closed_loop(sys.unraisablehook)
