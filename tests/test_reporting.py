"""benchmarks.reporting: the one helper benchmarks and experiments write their results with."""

import json
import math
import os
import sys

import numpy as np
import pytest

from benchmarks import reporting
from esmjax.config import defaults as config_lib


def test_cells_and_tables_exact():
  cells = (103888.2, 0.9644, 0.0, 1.5e-5, float("nan"), 7, "a|b")
  assert [reporting.format_cell(x) for x in cells] == [
    "103,888",
    "0.964",
    "0",
    "1.50e-05",
    "–",
    "7",
    "a|b",
  ]
  table = reporting.markdown_table(
    ["variant", "ex/s"], [["jax", 103888.2], ["torch", float("nan")]]
  )
  assert table == "| variant | ex/s |\n|---|---|\n| jax | 103,888 |\n| torch | – |"
  # A '|' inside a header or cell is escaped (else it starts a column); an escaped one is kept.
  table = reporting.markdown_table(["CVR | click", "n"], [["9 %", "a|b"], ["x \\| y", 1]])
  assert table == "| CVR \\| click | n |\n|---|---|\n| 9 % | a\\|b |\n| x \\| y | 1 |"
  assert reporting.fmt_rate(12345.0) == "12.3 k" and reporting.fmt_rate(float("nan")) == "–"


def test_checks_markdown_words():
  checks = [
    reporting.check("A above B", True, "+0.01"),
    reporting.check("pipeline ≥ 5× step", False, "3.2×"),
  ]
  assert reporting.checks_markdown(checks) == (
    "- **holds** — A above B: +0.01\n- **does NOT hold** — pipeline ≥ 5× step: 3.2×"
  )
  assert reporting.checks_markdown(checks, ("met", "not met")).splitlines()[1] == (
    "- **not met** — pipeline ≥ 5× step: 3.2×"
  )
  assert checks[0] == {"claim": "A above B", "holds": True, "detail": "+0.01"}


def test_write_results_files(tmp_path):
  drawn = []
  figures = {
    "": lambda p: (drawn.append(p.name), p.write_bytes(b"png")),
    "auc": lambda p: (drawn.append(p.name), p.write_bytes(b"png")),
  }
  record = {"x": np.float32(0.5), "n": np.int64(3), "a": np.arange(2), "nan": float("nan")}
  paths = reporting.write_results(
    tmp_path / "out", "bench", record, "# title\n", figures=figures, header="<!-- h -->\n"
  )
  assert [p.name for p in paths] == ["bench.png", "bench_auc.png", "bench.md", "bench.json"]
  assert drawn == ["bench.png", "bench_auc.png"]
  assert (tmp_path / "out" / "bench.md").read_text() == "<!-- h -->\n# title\n"
  back = json.loads((tmp_path / "out" / "bench.json").read_text())
  assert back["x"] == 0.5 and back["n"] == 3 and isinstance(back["n"], int) and back["a"] == [0, 1]
  assert math.isnan(back["nan"])
  assert not list((tmp_path / "out").glob("*.tmp"))


def test_provenance_and_finish():
  rec = reporting.provenance("python benchmarks/x.py --quick")
  assert rec["command"] == "python benchmarks/x.py --quick"
  assert set(rec) == {"when", "written_utc", "command", "machine", "code", "load_before"}
  assert set(rec["machine"]) == {"cpu", "cpu_bf16_flags", "cores", "mem_available_gb", "gpus"}
  assert rec["machine"]["cores"] >= 1
  assert set(rec["code"]) == {"commit", "esmjax_uncommitted"}
  reporting.finish(rec, started=0.0)
  assert rec["elapsed_s"] > 0 and isinstance(rec["load_after"], list)
  code = {"code": {"commit": "abc1234", "esmjax_uncommitted": ["esmjax/a.py"]}}
  assert reporting.code_line(code) == (
    "esmjax at commit abc1234 with uncommitted changes to esmjax/a.py. "
  )
  assert reporting.code_line({}) == ""


def test_command_line_names_the_script_or_module(monkeypatch):
  root = reporting.REPO
  monkeypatch.setattr(sys, "argv", [os.path.join(root, "experiments", "esm2_table.py"), "--quick"])
  assert reporting.command_line() == "python -m experiments.esm2_table --quick"
  monkeypatch.setattr(sys, "argv", [os.path.join(root, "benchmarks", "user_path.py"), "--quick"])
  assert reporting.command_line() == "python benchmarks/user_path.py --quick"
  assert reporting.command_line(["--rounds", "3"]) == "python benchmarks/user_path.py --rounds 3"


def test_overrides_set_existing_keys_and_name_a_typo():
  c = reporting.apply_overrides(
    config_lib.default_config(), {"train.batch_size": 1024, "model.name": "esm2"}
  )
  assert c.train.batch_size == 1024 and c.model.name == "esm2"
  with pytest.raises(
    config_lib.ConfigError, match=r"unknown config key 'train.batch'; keys of train: "
  ):
    reporting.apply_overrides(c, {"train.batch": 1})
  flags = reporting.override_flags(
    {"train.batch_size": 4096, "model.hidden": (200, 80), "x.y": (3,)}
  )
  assert flags == [
    "--config.train.batch_size=4096",
    "--config.model.hidden=(200,80)",
    "--config.x.y=(3,)",
  ]
