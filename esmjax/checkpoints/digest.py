"""Per-leaf digests of a train state, computed on the devices that hold it.

A checkpoint records the digest of every state leaf when it is saved and compares it after a
restore (`esmjax.checkpoints.checkpoint`), so bytes changed on disk (a flipped block that still
decodes) cannot come back as a state nobody trained.

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
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np

METHOD = "esmjax-digest-1"  # recorded beside the digests: a different method is never compared
_GOLDEN = 0x9E3779B9  # spreads the flat index over all 32 bits
_LANE2 = 0x3C6EF372  # the second lane hashes each element's first-lane hash again


def _fmix(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: every input bit flips about half of the output bits."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _bits(x: jax.Array) -> jax.Array:
  """The element bits as uint32 (8-byte elements as two words on a trailing axis)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  size = np.dtype(x.dtype).itemsize
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if size == 4 or size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf(x: jax.Array) -> jax.Array:
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


@jax.jit
def _digests(tree):
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): _leaf(x) for p, x in leaves}


def digests(tree) -> dict[str, str]:
  """{leaf path (jax.tree_util.keystr): 16 hex digits} of a tree of (global) arrays."""
  out = jax.device_get(_digests(tree))
  return {p: "".join(f"{int(w):08x}" for w in np.asarray(v)) for p, v in out.items()}
