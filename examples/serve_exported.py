"""Scores rows with an esmjax export using only jax + numpy: no esmjax, no config, no checkpoint.

  python examples/serve_exported.py MODEL.jaxexport [ROWS.npz]

ROWS.npz holds the inputs named in MODEL.jaxexport.json (sparse, mv_ids, mv_w, dense); without it,
four random rows of valid ids are scored. Prints a header, then one line of probabilities per row.

The exported function scores an id outside [0, vocab_size) of its column as the field's OOV row
(id 1). This script does the same before it casts to int32 (so an int64 2**32 + 5 stays out of
range instead of wrapping to 5) and says on stderr how many ids it mapped; values that are not
integer ids (NaN, 2.5) stop it with exit code 2.

Both files are checked against the digests esmjax wrote (`esmjax.common.digest`, reimplemented here
in
a few lines): the signature's own (`esmjax_digest`, the SHA-256 of its other keys as canonical
JSON) and the artifact's (`artifact_sha256`). A changed byte stops it with exit code 4.
"""

import hashlib
import json
import sys

import jax
import numpy as np

OOV = 1


def sha256(data: bytes) -> str:
  return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj) -> bytes:
  return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


path = sys.argv[1]
with open(path + ".json") as f:
  signature = json.load(f)  # inputs (name, dtype, [b, width], vocab sizes per id column), outputs
sealed = signature.pop("esmjax_digest", None)
with open(path, "rb") as f:
  artifact = f.read()
if sealed != sha256(canonical(signature)) or signature.get("artifact_sha256") != sha256(artifact):
  print(
    f"serve_exported: {path} or its signature changed since export: export again", file=sys.stderr
  )
  sys.exit(4)
exported = jax.export.deserialize(bytearray(artifact))

rng = np.random.default_rng(0)
rows = (
  dict(np.load(sys.argv[2]))
  if len(sys.argv) > 2
  else {
    x["name"]: np.array([rng.integers(0, v, 4) for v in x["vocab_sizes"]]).T.reshape(
      4, x["shape"][1]
    )
    if "vocab_sizes" in x
    else rng.random((4, x["shape"][1]))
    for x in signature["inputs"]
  }
)

batch = {}
for x in signature["inputs"]:
  a = np.asarray(rows[x["name"]])
  if "vocab_sizes" in x:  # ids: integers, out-of-range ones mapped to OOV in their own dtype
    if a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a))):
      print(f"serve_exported: {x['name']} holds values that are not integer ids", file=sys.stderr)
      sys.exit(2)
    vocab = np.asarray(x["vocab_sizes"])
    stray = (a < 0) | (a >= vocab) if a.dtype.kind != "u" else a >= vocab.astype(np.uint64)
    if stray.any():
      print(
        f"serve_exported: {int(stray.sum())} {x['name']} id(s) outside their field's "
        "vocabulary scored as OOV",
        file=sys.stderr,
      )
      a = np.where(stray, OOV, a)
  batch[x["name"]] = np.asarray(a, x["dtype"])
out = exported.call(batch)  # {output name: [b] float32}
names = [o["name"] for o in signature["outputs"]]
print(" ".join(names))
for i in range(len(batch["sparse"])):
  print(" ".join(f"{float(out[k][i]):.9g}" for k in names))
