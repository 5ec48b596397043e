"""What went wrong under orbax, said once: the OS error behind a failed save, and quiet otherwise.

A checkpoint save that fails in orbax's background threads surfaces as an exception whose chain
(or tensorstore's message, `os_error_code=28`) holds the OS error; `describe` names it as
"ENOSPC (No space left on device)". Meanwhile orbax logs the same failure once per thread with a
traceback, asyncio once per future orbax left behind, and tensorstore's callbacks into orbax's
closed event loops print 'Event loop is closed' tracebacks until exit: hundreds of lines that
would bury the one that matters. `esmjax.checkpoints.checkpoint.Checkpointer` raises that one line
itself, so it installs the filters here.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import threading

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
  """Drops error records of a write that failed with one of WRITE_ERRNOS: orbax's (with tracebacks)
  and asyncio's 'Future exception was never retrieved' for the futures orbax left behind."""

  def filter(self, record: logging.LogRecord) -> bool:
    ours = record.name == "asyncio" or "/orbax/" in record.pathname
    if record.levelno < logging.ERROR or not ours:
      return True
    code = errno_of(record.exc_info[1]) if record.exc_info else None
    text = record.getMessage()
    if code is None:
      m = _OS_ERROR_CODE.search(text)
      named = (c for c in WRITE_ERRNOS if os.strerror(c) in text)
      code = int(m.group(1)) if m else next(named, None)
    return code not in WRITE_ERRNOS


_FILTER = _WriteErrorLogs()


def drop_write_error_logs() -> None:
  """Installs the filter on absl's logger (where orbax logs) and asyncio's, once per process."""
  for name in ("absl", "asyncio"):
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
      logger.addFilter(_FILTER)


def _closed_loop(error) -> bool:
  return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)


def drop_closed_loop_errors() -> None:
  """Drops, from now on, the 'Event loop is closed' errors of callbacks into an event loop that
  orbax closed (after a failed save or restore, until exit): tensorstore reports them from its own
  threads through sys.excepthook (PyErr_Print), or as unraisable. Anything else passes."""
  if not getattr(sys.unraisablehook, "drops_closed_loop", False):
    previous_unraisable = sys.unraisablehook

    def unraisable(report):
      if _closed_loop(report.exc_value):
        return
      if _CONTAIN["armed"] and _is_coroutine(report.object):
        _CONTAIN["dropped"] += 1
        return
      previous_unraisable(report)

    unraisable.drops_closed_loop = True
    sys.unraisablehook = unraisable
  if not getattr(sys.excepthook, "drops_closed_loop", False):
    previous_except = sys.excepthook

    def excepthook(kind, value, tb):
      if not (_closed_loop(value) and threading.current_thread() is not threading.main_thread()):
        previous_except(kind, value, tb)

    excepthook.drops_closed_loop = True
    sys.excepthook = excepthook


# After a checkpoint failed to read, the coroutines of its aborted reads (one per chunk) are
# garbage-collected with their errors unretrieved, each printed as "Exception ignored in
# <coroutine ...>" with a traceback: thousands of lines after the one warning that names the
# checkpoint. `contain_aborted_reads` counts them instead.
_CONTAIN = {"armed": False, "dropped": 0}


def _is_coroutine(obj) -> bool:
  import inspect

  return inspect.iscoroutine(obj) or type(obj).__name__ in ("coroutine", "Task", "Future")


def contain_aborted_reads() -> None:
  """From now on, unraisable errors reported for coroutines (orbax's aborted reads of a checkpoint
  that could not be read) are counted (`dropped_reads()`), not printed; others still print."""
  drop_closed_loop_errors()
  _CONTAIN["armed"] = True


def dropped_reads() -> int:
  return _CONTAIN["dropped"]
