"""Files a command writes for the user (predictions, exports, their metadata): written whole or
not at all, and every failure one line naming the file.

`check_target(path, what)` refuses, before any work, a path that is a directory or lies under a
file. `atomic_write` / `atomic_open` write `<path>.tmp-<pid>` and rename it over `path`: a reader
never sees half a file, and a failed write (disk full, read-only file system, no permission)
removes its temporary and raises `OutputError` (the path is the user's to fix: exit 2) or
`WriteError` (the machine's: exit 3), naming the file and the OS error.
"""

from __future__ import annotations

import contextlib
import errno
import os

from esmjax import exits

# OS errors of the path itself (not of the machine): the user picks another path.
_PATH_ERRNOS = (errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT)


class OutputError(ValueError):
  """An output path that cannot be written (a directory, read-only, no permission); names it.
  A user error: the command line exits 2 (`esmjax.cli`)."""


class WriteError(RuntimeError):
  """An output could not be written whole (disk full, I/O error); names the file and the error."""


def describe(e: OSError) -> str:
  code = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else type(e).__name__
  return f"{e.strerror or e} ({code})"


def error(path: str, what: str, e: OSError) -> Exception:
  """The one-line error for an OSError raised while writing `path` (`what` names the output)."""
  message = f"cannot write {what} {path}: {describe(e)}"
  if e.errno in _PATH_ERRNOS:
    return OutputError(message + "; give a writable file path")
  return WriteError(message + "; free space or write elsewhere, then rerun")


def check_target(path: str, what: str) -> None:
  """Refuses, before any work, a `path` that is a directory or whose parent is a file."""
  if os.path.isdir(path):
    raise OutputError(f"{what} {path} is a directory; give a file path")
  parent = os.path.dirname(os.path.abspath(path))
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise OutputError(f"{what} {path}: {parent} is a file, not a directory")


@contextlib.contextmanager
def atomic_open(path: str, what: str, mode: str = "w", **kwargs):
  """A file object for `path`'s temporary, renamed over `path` when the block ends without error;
  on any error the temporary is removed, an OSError re-raised as OutputError / WriteError."""
  check_target(path, what)
  tmp = f"{path}.tmp-{os.getpid()}"
  exits.TEMPORARIES.add(tmp)  # removed by a Ctrl-C too
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, mode, **kwargs) as f:
      yield f
    os.replace(tmp, path)
  except OSError as e:
    _remove(tmp)
    raise error(path, what, e) from None
  except BaseException:
    _remove(tmp)
    raise
  finally:
    exits.TEMPORARIES.discard(tmp)


def atomic_write(path: str, data: bytes, what: str) -> None:
  with atomic_open(path, what, "wb") as f:
    f.write(data)


def _remove(path: str) -> None:
  with contextlib.suppress(OSError):
    os.remove(path)
