"""absl flags outside an absl app (tests, notebooks, benchmarks, experiments).

grain reads absl flags (its multiprocessing prefetch options); before `app.run` has parsed them,
reading one raises. `ensure_parsed()` parses the program name only, so every flag keeps its
default; inside an absl app, where the flags are parsed already, it does nothing.
"""

from __future__ import annotations


def ensure_parsed(program: str = "esmjax") -> None:
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS([program], known_only=True)
