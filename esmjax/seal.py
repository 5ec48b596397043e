"""`python -m esmjax.seal PATH...`: seals files esmjax reads back that an older esmjax wrote
without a digest (`esmjax.common.digest`), once their owner has checked them. A command of its own,
above
both `esmjax.common.digest` (layer 0) and the dataset format (`esmjax.data.format.dataset`), which
it may both
call."""

import json
import os
import sys

from esmjax.common import digest


def main(argv: list[str]) -> int:
  """`python -m esmjax.seal PATH...`: seals JSON files written without a digest (by an older
  esmjax) after their owner checked them; a dataset directory or its manifest.json also gets the
  size and tail digest of every shard it lists (`esmjax.data.format.dataset.seal_manifest`)."""
  if not argv:
    print("usage: python -m esmjax.seal PATH... (JSON files, or dataset directories)")
    return 2
  for path in argv:
    try:
      if os.path.isdir(path) or os.path.basename(path) == "manifest.json":
        from esmjax.data.format import dataset

        dataset.seal_manifest(path if os.path.isdir(path) else os.path.dirname(path) or ".")
      else:
        with open(path, "rb") as f:
          obj = json.loads(f.read())
        if not isinstance(obj, dict):
          raise digest.IntegrityError(f"{path}: not a JSON object, cannot be sealed")
        digest.write_json(path, obj, indent=1)
    except (OSError, ValueError) as e:
      print(f"esmjax: error: {e}", file=sys.stderr)
      return 4 if isinstance(e, digest.IntegrityError) else 2
    print(f"sealed {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
