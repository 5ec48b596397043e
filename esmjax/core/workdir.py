"""The workdir a run owns: created (or refused with the reason), locked for the run's life, and
the files that describe the run to the tools that read it afterwards (predict, load, export).

  <workdir>/run-p<i>.lock   held (flock) by process i of the run that owns the workdir; it names
                            that process (pid, host, start time) once the run has passed every
                            check that can refuse it (`Claim.announce`). The kernel releases the
                            lock when the process ends, however it ends: a killed run never
                            blocks its rerun.

A run that is refused (another owner, an incompatible config or checkpoint, data with another
schema than the workdir's model) leaves the workdir byte-identical: every check runs while the
lock is held and before the first write (the owner line, schema.json, metrics, checkpoints).
  <workdir>/schema.json     the training data's schema (predict / load / export rebuild the model
                            from it, without the training data), sealed with its digest
                            (`esmjax.common.digest`): `read_schema` refuses it once changed
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time

import jax

from esmjax.common import digest
from esmjax.common.schema import Schema
from esmjax.config.defaults import ConfigError

SCHEMA_FILE = "schema.json"
SUMMARY_FILE = "summary.json"  # written by esmjax.training.summary, read by serving
SUMMARY_FIX = (
  "restore it from a copy, or delete it (the config is then read from the latest checkpoint)"
)


class WorkdirError(ConfigError):
  """The workdir cannot be used (a file, not writable, or owned by another run); names the path."""


def _lock_path(workdir: str, process_index: int) -> str:
  return os.path.join(workdir, f"run-p{process_index}.lock")


def _reason(e: OSError) -> str:
  return f"{e.strerror} ({errno.errorcode.get(e.errno, e.errno)})"


def _create(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except FileExistsError:
    raise WorkdirError(
      f"--workdir={workdir} is a file, not a directory; give a directory"
    ) from None
  except NotADirectoryError:
    raise WorkdirError(
      f"--workdir={workdir}: a part of the path is a file, not a directory"
    ) from None
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir} cannot be created: {_reason(e)}") from None


def _open_lock(path: str, workdir: str):
  try:
    return open(path, "a+")
  except OSError as e:
    raise WorkdirError(
      f"--workdir={workdir} is not writable: {_reason(e)} creating {path}"
    ) from None


def _owner(f) -> str:
  f.seek(0)
  text = f.read().strip()
  return text or "another process (it has not written its name yet)"


class Claim:
  """A held workdir lock; `announce()` writes this process's name into the lock file."""

  def __init__(self, f, index: int):
    self._f, self._index = f, index

  def announce(self) -> None:
    """Names this process as the owner (called once the run has passed its refusing checks)."""
    f = self._f
    f.seek(0)
    f.truncate()
    f.write(
      f"pid {os.getpid()} on host {socket.gethostname()} (process {self._index} of "
      f"{jax.process_count()}), since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
    )
    f.flush()


@contextlib.contextmanager
def claim(workdir: str, announce: bool = True):
  """Creates `workdir` if needed and holds its lock until the block ends; yields a `Claim`.

  `announce=False` leaves the lock file's content (the last owner's name) as it is until the
  caller's `Claim.announce()`, so a run refused by a later check has written nothing; a contender
  in that window is refused all the same (the lock is held), naming the file's last owner.

  Raises WorkdirError (a ConfigError: exit 2 on the command line) naming the path when the workdir
  is a file or cannot be written, and naming the owner (pid, host) when another run holds it. Each
  process of a multi-process job locks its own file; the processes agree, so a job whose process
  is refused stops everywhere rather than waiting for it.
  """
  _create(workdir)
  index = jax.process_index()
  path = _lock_path(workdir, index)
  f = _open_lock(path, workdir)
  refused = None
  try:
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      refused = (
        f"--workdir={os.path.abspath(workdir)} is in use by another run: {_owner(f)} "
        f"holds {path}; wait for it to finish, stop it, or use another --workdir"
      )
    _agree(refused)
    held = Claim(f, index)
    if announce:
      held.announce()
    yield held
  finally:
    f.close()  # releases the lock (if held): the file stays, its content names the last owner


def _agree(refused: str | None) -> None:
  """Raises WorkdirError on every process when any process could not lock its file."""
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray([refused is not None]))
    failed = np.asarray(gathered).reshape(-1)
    if refused is None and failed.any():
      refused = (
        f"process {int(np.flatnonzero(failed)[0])} of this job could not lock its workdir "
        "(another run holds it); this process stops too"
      )
  if refused:
    raise WorkdirError(refused)


def check_schema(workdir: str, schema, has_model: bool) -> None:
  """Refuses data whose model inputs differ from those of the model the workdir holds.

  `has_model`: the workdir has a checkpoint this run would resume. Its schema.json describes the
  inputs that model was trained on (vocabularies, dense statistics); replacing it would make
  predict / load / export feed that model other inputs. Without a model it is simply rewritten.
  """
  path = os.path.join(workdir, SCHEMA_FILE)
  if not has_model or not os.path.exists(path):
    return
  try:
    saved = Schema.from_json(read_schema(workdir))  # verified: a changed file is refused
  except digest.IntegrityError:
    raise
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise WorkdirError(
      f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
      "it describes the inputs of the model in this workdir: restore it, or use another --workdir"
    ) from None
  diff = saved.input_difference(schema)
  if diff is not None:
    raise WorkdirError(
      f"--workdir={os.path.abspath(workdir)} holds a model trained on data with other inputs "
      f"than this run's training data ({diff}; {path} vs the data); use another --workdir, or "
      "the data it was trained on"
    )


def write_schema(workdir: str, schema) -> None:
  """The training schema, for predict / load / export (process 0 writes it)."""
  if jax.process_index() == 0:
    digest.write_json(os.path.join(workdir, SCHEMA_FILE), schema.to_json(), indent=1)


def read_schema(workdir: str) -> dict:
  """The training schema's JSON, verified against its digest (`digest.IntegrityError` naming the
  file otherwise: the model would score with other statistics or vocabularies)."""
  return digest.read_json(
    os.path.join(workdir, SCHEMA_FILE),
    "restore it from a copy, or rerun the training command on the same data (it writes the "
    "file again from data.train_dir's manifest)",
  )


def read_summary(workdir: str) -> dict | None:
  """`<workdir>/summary.json`, verified against its digest, or None when no run finished there; a
  file that is corrupt, cut short or edited raises `digest.IntegrityError` naming it."""
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  return digest.read_json(path, SUMMARY_FIX)
