"""Options: a benchmark declares a dataclass of its options, with defaults and help; that
dataclass IS its command line.

    @dataclasses.dataclass
    class Opts(harness.Timed):                 # out_dir, rounds, windows, window_s, warmup_s
      quick: bool = False                       # help: COMMON_HELP["quick"]
      rows: str = harness.opt("1e5,1e7", "table sizes")
      malloc: str = harness.opt("huge", "allocator", choices=("huge", "os"))
      windows: int = 11                         # a shared option with this benchmark's default

    opts = harness.parse(Opts, argv, __doc__)   # --rows=1e5 --windows 9 --quick ...

Every field is a flag `--<name>` of its type (bool: a switch; int, float, str: a value). The
options several benchmarks share are declared once here (`Options`, `Timed`, `COMMON_HELP`): a
benchmark redeclares one only to change its default, and its help comes from here. A bad value is
one line naming the flag and what it takes (exit 2), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from .record import RESULTS

COMMON_HELP = {
  "out_dir": "where <name>.json and <name>.md go",
  "quick": "the smallest settings that still measure something (a smoke test; noisy numbers)",
  "rounds": "interleaved rounds over every variant (each round alternates who goes first)",
  "windows": "timed windows per measurement (the median is quoted)",
  "window_s": "seconds per timed window (at least)",
  "warmup_s": "seconds of steps after the first (compiling) one, before timing",
  "seed": "seed of the generated data",
  "worker_timeout": "seconds a worker process may run before it is killed and reported",
  "malloc": "allocator for every worker, both frameworks alike: huge = as `python -m esmjax.main` "
  "starts; os = the OS default",
}

T = TypeVar("T")


def opt(default: Any, help: str = "", choices: Sequence[Any] | None = None) -> Any:
  """A field of an options dataclass: its default, its help, and the values it allows (if few)."""
  return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class Options:
  """The options of every benchmark that writes results (one with a quick mode declares
  `quick: bool = False`, its help from COMMON_HELP unless it says more)."""

  out_dir: str = str(RESULTS)


@dataclasses.dataclass
class Timed(Options):
  """The options of a benchmark that times steps in windows over interleaved rounds."""

  rounds: int = 1
  windows: int = 3
  window_s: float = 3.0
  warmup_s: float = 2.0


def timing_spec(opts: Any) -> dict[str, float]:
  """The timing options as a worker spec reads them (`timing.spec_windows`)."""
  return {"warmup_s": opts.warmup_s, "windows": opts.windows, "window_s": opts.window_s}


_TYPES = {int: "an integer", float: "a number", str: "a string"}


def _converter(name: str, kind: type):
  def convert(text: str):
    try:
      return kind(float(text)) if kind is int and "e" in text.lower() else kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"takes {_TYPES[kind]}, not {text!r}") from None

  convert.__name__ = kind.__name__
  return convert


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):
    """One line, no usage block: '<prog>: error: argument --windows: takes an integer, not 'x''."""
    self.exit(2, f"{self.prog}: error: {message}\n")


def parser(cls: type, description: str = "") -> argparse.ArgumentParser:
  """The argparse parser of an options dataclass (one flag per field)."""
  ap = _Parser(description=(description or "").split("\n\n")[0])
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    kind = hints[f.name]
    help_ = f.metadata.get("help") or COMMON_HELP.get(f.name, "")
    flag = f"--{f.name}"
    if kind is bool:
      ap.add_argument(flag, action="store_true", default=f.default, help=help_)
      continue
    if kind not in _TYPES:
      raise TypeError(f"option {f.name}: type {kind} is not one of bool, int, float, str")
    choices = f.metadata.get("choices")
    ap.add_argument(
      flag,
      type=_converter(f.name, kind),
      default=f.default,
      choices=choices,
      help=f"{help_} (default {f.default!r})",
    )
  return ap


def parse(cls: type[T], argv: Sequence[str] | None = None, description: str = "") -> T:
  """Parses `argv` (default sys.argv[1:]) into an instance of the options dataclass `cls`."""
  args = parser(cls, description).parse_args(sys.argv[1:] if argv is None else list(argv))
  return cls(**vars(args))


def subset(flag: str, text: str, allowed: Sequence[str]) -> list[str]:
  """The comma-separated names of `text` (option `--flag`), each one of `allowed`; an unknown
  name is one line naming the flag and the allowed names (exit 2)."""
  names = [n for n in text.split(",") if n]
  unknown = sorted(set(names) - set(allowed))
  if unknown:
    prog = os.path.basename(sys.argv[0])
    print(
      f"{prog}: error: argument --{flag}: unknown {unknown}; allowed: {','.join(allowed)}",
      file=sys.stderr,
    )
    sys.exit(2)
  return names
