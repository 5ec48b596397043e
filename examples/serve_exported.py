"""Scores rows with an esmjax export using only jax + numpy: no esmjax, no config, no checkpoint.

  python examples/serve_exported.py MODEL.jaxexport [ROWS.npz]

ROWS.npz holds the inputs named in MODEL.jaxexport.json (sparse, mv_ids, mv_w, dense); without it,
four random rows of valid ids are scored. Prints a header, then one line of probabilities per row.
"""
import json
import sys

import jax
import numpy as np

path = sys.argv[1]
with open(path + ".json") as f:
  signature = json.load(f)  # inputs (name, dtype, [b, width], vocab sizes per id column), outputs
with open(path, "rb") as f:
  exported = jax.export.deserialize(bytearray(f.read()))

rng = np.random.default_rng(0)
rows = dict(np.load(sys.argv[2])) if len(sys.argv) > 2 else {
    x["name"]: np.array([rng.integers(0, v, 4) for v in x["vocab_sizes"]]).T.reshape(4, x["shape"][1])
    if "vocab_sizes" in x else rng.random((4, x["shape"][1])) for x in signature["inputs"]}
batch = {x["name"]: np.asarray(rows[x["name"]], x["dtype"]) for x in signature["inputs"]}
out = exported.call(batch)  # {output name: [b] float32}
names = [o["name"] for o in signature["outputs"]]
print(" ".join(names))
for i in range(len(batch["sparse"])):
  print(" ".join(f"{float(out[k][i]):.9g}" for k in names))
