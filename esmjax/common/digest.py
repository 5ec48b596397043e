"""Digests of what esmjax writes and later reads back: train-state arrays, and files.

Every file esmjax writes and later trusts carries a digest written with it, or is named with its
digest in a file that does, and the digest is verified on every read: bytes changed on disk after
writing (an edit, a flipped bit, a partial copy, a file swapped for another) stop the reader with
one line naming the file and what to do (`IntegrityError`; exit code 4 on the command line), never
a result computed from them.

Files. A JSON file is sealed (`write_json`, `seal`): its object gets the key `esmjax_digest`, the
SHA-256 of the canonical JSON (sorted keys, no spaces) of its other keys, so any change of a value
is caught while re-indenting is not; `read_json` verifies it and returns the object without it.
A binary file or a file read in parts is named with its digest (`file_digest`, the SHA-256 of its
bytes; `tail_digest`, its size and the SHA-256 of its last 4 KB, for shards whose own index and
checksums cover the rest) in a sealed file. Paths read from a sealed file are confined to its
directory and to regular files (`confined_file`). A file without a digest was written by an older
esmjax (or not by esmjax): the reader refuses it and says how to regenerate it, or how to seal it
after checking it (`python -m esmjax.seal PATH`), except where the caller documents otherwise.
These guard against accidental change, not against someone forging a file with its digest.

Arrays. Per-leaf digests of a train state are computed on the devices that hold it. A checkpoint
records the digest of every state leaf when it is saved and compares it after a
restore (`esmjax.checkpoints.checkpoint`), so bytes changed on disk (a flipped block that still
decodes)
cannot come back as a state nobody trained.

The digest of an array is two uint32 sums over its elements: of h = fmix(bits ^ salt(flat index,
dtype, shape)), and of fmix(h + c), with fmix MurmurHash3's finaliser. It is a function of the
global array's values alone:

- computed in one jitted program over the sharded arrays, where they live: no host copy, and in
  a multi-process run every process gets the same value (XLA reduces across the devices and
  processes) without gathering the arrays anywhere;
- independent of the sharding and of the device count, since sums modulo 2**32 are exact in any
  order: a checkpoint written on 8 devices verifies on 2;
- sensitive to every bit: changing any set of elements changes a lane unless the changes cancel
  modulo 2**32 in both lanes at once (odds about 2**-64 for corrupted data). It guards against
  accidental corruption, not against someone forging a state.

`state.state_fingerprint` (a SHA-256 of host copies) compares runs bit for bit in tests and
summaries; for a checkpoint it would copy every array to one host first.

JAX is imported only by the array digests: the converters use the file digests without it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import zlib
from typing import Any

import numpy as np

KEY = "esmjax_digest"  # the key a sealed JSON object carries its digest under
FILE_METHOD = "sha256"  # the prefix of every file digest: "sha256:<64 hex digits>"
TAIL_BYTES = 4096
SEAL_HINT = "python -m esmjax.seal {}"


class IntegrityError(ValueError):
  """A file esmjax wrote differs from its digest, has none, or is named by a path that leaves
  its directory or is not a regular file. The message names the file and what to do."""


def _canonical(obj: Any) -> bytes:
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def json_digest(obj: Any) -> str:
  """'sha256:<hex>' of an object's canonical JSON (what a JSON round trip leaves of it)."""
  return f"{FILE_METHOD}:{hashlib.sha256(_canonical(json.loads(_canonical(obj)))).hexdigest()}"


def seal(obj: dict[str, Any]) -> dict[str, Any]:
  """`obj` with its digest under KEY (a digest it carried is replaced)."""
  out = {k: v for k, v in obj.items() if k != KEY}
  out[KEY] = json_digest(out)
  return out


def verify_json(obj: Any, path: str, fix: str, *, legacy: str = "refuse") -> dict[str, Any]:
  """`obj` (read from `path`) without its digest; IntegrityError naming `path` and `fix` when it
  differs. An object without a digest: `legacy="refuse"` raises saying how to seal it,
  `"accept"` returns it as it is (the caller warns)."""
  if not isinstance(obj, dict):
    raise IntegrityError(f"{path}: expected a JSON object, found {type(obj).__name__}; {fix}")
  if KEY not in obj:
    if legacy == "accept":
      return obj
    raise IntegrityError(
      f"{path} has no digest (written by an older esmjax, or not by esmjax): {fix}; or, once "
      f"you have checked it, seal it with `{SEAL_HINT.format(path)}`"
    )
  body = {k: v for k, v in obj.items() if k != KEY}
  if json_digest(body) != obj[KEY]:
    raise IntegrityError(
      f"{path} changed after esmjax wrote it (its content does not match its digest): {fix}"
    )
  return body


def write_bytes(path: str, data: bytes) -> None:
  """Writes `path` through a `.tmp` file renamed into place: readers see the old or the new
  file, never half of one."""
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_json(path: str, obj: dict[str, Any], *, indent: int | None = None) -> str:
  """Writes `obj` sealed (atomically); returns its digest."""
  sealed = seal(obj)
  write_bytes(path, (json.dumps(sealed, indent=indent) + "\n").encode())
  return sealed[KEY]


def read_json(path: str, fix: str, *, legacy: str = "refuse") -> dict[str, Any]:
  """The verified object of a sealed JSON file (see `verify_json`); IntegrityError naming `path`
  when it is not readable JSON."""
  try:
    with open(path, "rb") as f:
      obj = json.loads(f.read())
  except (UnicodeDecodeError, ValueError) as e:
    raise IntegrityError(f"{path} is not readable JSON ({type(e).__name__}: {e}): {fix}") from None
  return verify_json(obj, path, fix, legacy=legacy)


def file_digest(path: str) -> str:
  """'sha256:<hex>' of a file's bytes."""
  with open(path, "rb") as f:
    return f"{FILE_METHOD}:{hashlib.file_digest(f, 'sha256').hexdigest()}"


def check_file(path: str, want: str, fix: str, data: bytes | None = None) -> None:
  """IntegrityError naming `path` when its bytes (or `data`, read from it) differ from `want`."""
  got = (
    f"{FILE_METHOD}:{hashlib.sha256(data).hexdigest()}" if data is not None else file_digest(path)
  )
  if got != want:
    raise IntegrityError(f"{path} changed after esmjax wrote it (its digest differs): {fix}")


def tail_digest(path: str) -> dict[str, Any]:
  """{'bytes': size, 'tail': digest of the last TAIL_BYTES}: names one shard among its siblings
  (its footer and index, which cover every block's checksum, lie at its end)."""
  fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
  try:
    size = os.fstat(fd).st_size
    os.lseek(fd, max(0, size - TAIL_BYTES), os.SEEK_SET)
    tail = os.read(fd, TAIL_BYTES)
  finally:
    os.close(fd)
  return {"bytes": int(size), "tail": f"{FILE_METHOD}:{hashlib.sha256(tail).hexdigest()}"}


def confined_file(directory: str, name: Any, where: str) -> str:
  """`directory/name` after checking that `name` is a relative path inside `directory` (no '..',
  no symlink leading out) naming a regular file (not a FIFO, a device, a directory); IntegrityError
  naming `where` (the file that lists it) otherwise. Never opens the file: a FIFO cannot block."""
  if not isinstance(name, str) or not name or "\0" in name:
    raise IntegrityError(f"{where} names the file {name!r}: not a file name")
  if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
    raise IntegrityError(
      f"{where} names {name!r}: a path outside its directory (absolute or with '..'); only "
      "files inside the directory are read"
    )
  path = os.path.join(directory, name)
  if "/" not in name:  # a plain name in the directory: a regular file that is no link is inside
    try:
      if stat.S_ISREG(os.lstat(path).st_mode):
        return path
    except FileNotFoundError:
      raise IntegrityError(f"{where} names {name!r}, which is missing: {path}") from None
  root = os.path.realpath(directory)
  real = os.path.realpath(path)
  if os.path.commonpath([root, real]) != root:
    raise IntegrityError(
      f"{where} names {name!r}, a link to {real} outside {directory}; only files inside the "
      "directory are read"
    )
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    raise IntegrityError(f"{where} names {name!r}, which is missing: {path}") from None
  if not stat.S_ISREG(mode):
    raise IntegrityError(f"{where} names {name!r}, which is not a regular file: {path}")
  return path


# -- arrays --------------------------------------------------------------------------------------

METHOD = "esmjax-digest-1"  # recorded beside the digests: a different method is never compared
_GOLDEN = 0x9E3779B9  # spreads the flat index over all 32 bits
_LANE2 = 0x3C6EF372  # the second lane hashes each element's first-lane hash again


def _fmix(h):
  """MurmurHash3's 32-bit finaliser: every input bit flips about half of the output bits."""
  import jax.numpy as jnp

  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _bits(x):
  """The element bits as uint32 (8-byte elements as two words on a trailing axis)."""
  import jax
  import jax.numpy as jnp

  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  size = np.dtype(x.dtype).itemsize
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if size == 4 or size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf(x):
  import jax
  import jax.numpy as jnp

  u = _bits(x)
  kind = zlib.crc32(f"{x.dtype}{tuple(x.shape)}".encode())  # the same bytes in another shape differ
  index = jnp.zeros(u.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(u.ndim)):  # the flat (row-major) index, modulo 2**32
    index = index + jax.lax.broadcasted_iota(jnp.uint32, u.shape, d) * jnp.uint32(stride % 2**32)
    stride *= u.shape[d]
  h = _fmix(u ^ (index * jnp.uint32(_GOLDEN) + jnp.uint32(kind)))
  lanes = (h, _fmix(h + jnp.uint32(_LANE2)))
  return jnp.stack([jnp.sum(lane, dtype=jnp.uint32) for lane in lanes])


@functools.cache
def _program():
  import jax

  @jax.jit
  def digest_leaves(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): _leaf(x) for p, x in leaves}

  return digest_leaves


def digests(tree) -> dict[str, str]:
  """{leaf path (jax.tree_util.keystr): 16 hex digits} of a tree of (global) arrays."""
  import jax

  out = jax.device_get(_program()(tree))
  return {p: "".join(f"{int(w):08x}" for w in np.asarray(v)) for p, v in out.items()}
