"""Ingestion cannot destroy or quietly change data: an --out_dir that is, holds or lies inside
--stats_from is refused before anything is touched; one ingestion per out_dir; ids trimmed like the
other cells, with the OOV share of every id column recorded (and warned about through
--stats_from); columns read by their header name; boolean Parquet labels; an empty output is an
error; swapped Ali-CCP inputs are refused; a cell-size cap, and token keys in memory bounded by the
token count."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiny
from test_aliccp import build_raw

from esmjax.data.format import dataset as ds_lib
from esmjax.data.format import ids as ids_lib
from esmjax.data.ingest import shared as ingestion
from esmjax.data.ingest.aliccp import convert as aliccp
from esmjax.data.ingest.csv import ingest as csv_ingest
from esmjax.data.ingest.csv.columns import str_keys

REPO = Path(__file__).resolve().parents[1]
AITM = REPO / "tests/data/public-samples/PaddleRec/models/multitask/aitm/data/sample_data"
HEADER = ["click", "buy", "a", "b", "d"]
ROWS = [
  ["1", "0", "u1", "x", "0.5"],
  ["1", "1", "u2", "y", "1.5"],
  ["0", "0", "u1", "z", "2.5"],
  ["0", "0", "u3", "x", "3.5"],
  ["1", "0", "u2", "y", "4.5"],
]


def config(**overrides):
  c = csv_ingest.base_config()
  c.labels = {"click": "click", "buy": "buy"}
  c.sparse = ("a", "b")
  c.dense = ("d",)
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def write_csv(path: Path, rows, header=HEADER, sep=",") -> str:
  lines = [sep.join(header)] if header else []
  path.write_text("\n".join(lines + [sep.join(r) for r in rows]) + "\n")
  return str(path)


def tree_digest(root) -> dict[str, str]:
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    out[os.path.relpath(dirpath, root) + "/"] = ",".join(sorted(dirnames + filenames))
    for name in filenames:
      with open(os.path.join(dirpath, name), "rb") as f:
        out[os.path.relpath(os.path.join(dirpath, name), root)] = hashlib.sha256(
          f.read()
        ).hexdigest()
  return out


def ingest(inputs, out, **kw):
  return csv_ingest.ingest(kw.pop("cfg", config()), inputs, str(out), progress=False, **kw)


def same_blocks(a: str, b: str) -> None:
  x, y = ds_lib.open_dataset(a).read_all(), ds_lib.open_dataset(b).read_all()
  assert sorted(x) == sorted(y)
  for k in x:
    np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# -- --out_dir against --stats_from ---------------------------------------------------------------


@pytest.fixture
def train(tmp_path):
  out = tmp_path / "data" / "train"
  ingest([write_csv(tmp_path / "train.csv", ROWS)], out)
  os.symlink(out, tmp_path / "link")
  return out


@pytest.mark.parametrize(
  "out, relation",
  [("data/train", "is"), ("data/train/test", "is inside"), ("data", "holds"), ("link", "is")],
)
def test_csv_out_dir_that_is_holds_or_lies_in_stats_from_is_refused_untouched(
  tmp_path, train, out, relation
):
  before = tree_digest(tmp_path / "data")
  test_csv = write_csv(tmp_path / "test.csv", ROWS[:2])
  with pytest.raises(
    ingestion.IngestError,
    match=rf"^--out_dir=.*{out} {relation} --stats_from=.*train \(.*\): writing there would "
    r"replace the dataset whose vocabularies and statistics are read; give another --out_dir$",
  ):
    ingest([test_csv], tmp_path / out, stats_from=str(train))
  assert tree_digest(tmp_path / "data") == before
  assert not (tmp_path / "data/train/test").exists()


@pytest.mark.parametrize("out", ["ali/train", "ali/train/test", "ali"])
def test_aliccp_out_dir_that_is_holds_or_lies_in_stats_from_is_refused_untouched(tmp_path, out):
  sk, cf, _ = build_raw(tmp_path)
  train = tmp_path / "ali" / "train"
  aliccp.convert(str(sk), str(cf), str(train), workers=1, progress=False)
  before = tree_digest(tmp_path / "ali")
  with pytest.raises(aliccp.ConversionError, match=r"give another --out_dir$"):
    aliccp.convert(
      str(sk), str(cf), str(tmp_path / out), workers=1, stats_from=str(train), progress=False
    )
  assert tree_digest(tmp_path / "ali") == before
  ds_lib.open_dataset(str(train)).read_all()  # still a whole dataset


# -- one ingestion per out_dir --------------------------------------------------------------------


def test_second_ingestion_into_an_out_dir_is_refused_naming_the_owner(tmp_path):
  out = tmp_path / "out"
  csv = write_csv(tmp_path / "t.csv", ROWS)
  sk, cf, _ = build_raw(tmp_path)
  owner = rf"pid {os.getpid()} on host \S+, since .* holds {out}/\.converting\.lock; wait"
  with ingestion.out_dir_lock(str(out)):  # an ingestion in progress (its lock held)
    with pytest.raises(ingestion.IngestError, match=rf"writing to {out}: {owner}"):
      ingest([csv], out)
    with pytest.raises(aliccp.ConversionError, match=rf"writing to {out}: {owner}"):
      aliccp.convert(str(sk), str(cf), str(out), workers=1, progress=False)
  assert os.listdir(out) == [".converting.lock"]  # the refused ones wrote nothing
  assert ingest([csv], out)["num_rows"] == len(ROWS)  # released: the next one runs


def test_failed_ingestion_leaves_no_out_dir_it_created(tmp_path):
  bad = write_csv(tmp_path / "bad.csv", ROWS + [["7", "0", "u1", "x", "1"]])
  with pytest.raises(ingestion.IngestError, match=r"bad_lines=fail: .*bad\.csv:7: bad_label"):
    ingest([bad], tmp_path / "new", cfg=config(bad_lines="fail"))
  assert not (tmp_path / "new").exists()


# -- ids: trimmed, and their OOV share recorded ---------------------------------------------------


def test_ids_after_comma_space_separators_map_like_without(tmp_path, capsys):
  train = tmp_path / "train"
  ingest([write_csv(tmp_path / "train.csv", ROWS)], train)
  spaced = write_csv(tmp_path / "spaced.csv", ROWS, header=HEADER, sep=", ")
  m = ingest([spaced], tmp_path / "s", stats_from=str(train))
  assert m["ingest"]["oov"] == {
    "a": {"values": 5, "oov": 0, "share": 0.0},
    "b": {"values": 5, "oov": 0, "share": 0.0},
  }
  ingest([write_csv(tmp_path / "plain.csv", ROWS)], tmp_path / "p", stats_from=str(train))
  same_blocks(str(tmp_path / "s"), str(tmp_path / "p"))
  # Trimmed in the vocabulary too: a spaced train split builds the same one.
  ingest([spaced], tmp_path / "train_spaced")
  same_blocks(str(tmp_path / "train_spaced"), str(train))
  assert "warning" not in capsys.readouterr().err


def test_oov_share_is_recorded_and_warned_about_above_the_threshold(tmp_path, capsys):
  train = tmp_path / "train"
  m = ingest([write_csv(tmp_path / "train.csv", ROWS)], train)
  assert m["ingest"]["oov"]["a"] == {"values": 5, "oov": 0, "share": 0.0}
  # 3 of 4 'a' ids unseen in training (0.75 > 0.5), 1 of 4 'b' ids (0.25: no warning).
  rows = [["1", "0", "n1", "x", "1"], ["0", "0", "n2", "y", "1"]]
  rows += [["0", "0", "n3", "q", "1"], ["1", "0", "u1", "z", "1"]]
  m = csv_ingest.ingest(
    config(), [write_csv(tmp_path / "test.csv", rows)], str(tmp_path / "t"), stats_from=str(train)
  )
  assert m["ingest"]["oov"] == {
    "a": {"values": 4, "oov": 3, "share": 0.75},
    "b": {"values": 4, "oov": 1, "share": 0.25},
  }
  warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
  assert warnings == [
    f"warning: column 'a': 75.0% of its 4 ids are not in the vocabulary of --stats_from={train} "
    "(OOV; config.oov_warn_share=0.5)"
  ]
  csv_ingest.ingest(
    config(oov_warn_share=0.2),
    [str(tmp_path / "test.csv")],
    str(tmp_path / "t2"),
    stats_from=str(train),
  )
  assert sum("warning: column" in line for line in capsys.readouterr().err.splitlines()) == 2


def test_a_token_key_does_not_depend_on_the_tokens_beside_it():
  alone = str_keys(pa.array(["abc", "7x"]), numeric=False)
  beside_long = str_keys(pa.array(["abc", "7x", "y" * 41]), numeric=False)
  np.testing.assert_array_equal(alone, beside_long[:2])
  np.testing.assert_array_equal(alone, ids_lib.str_keys(["abc", "7x"]))


def test_vocabulary_with_a_long_value_maps_short_ids_of_another_split(tmp_path):
  # The vocabulary's keys are computed beside its longest value, a test batch's without it.
  rows = ROWS + [["0", "0", "u" * 40, "x", "1"]]
  train = tmp_path / "train"
  ingest([write_csv(tmp_path / "train.csv", rows)], train)
  m = ingest([write_csv(tmp_path / "test.csv", ROWS[:3])], tmp_path / "t", stats_from=str(train))
  assert m["ingest"]["oov"]["a"]["oov"] == 0


# -- columns by header name -----------------------------------------------------------------------


def test_positional_config_reads_a_header_in_another_order_by_name(tmp_path):
  cfg = tiny.repo_config("configs/data/aitm_aliccp.py")  # config.columns: file order, header auto
  lines = (AITM / "train/train.csv").read_text().splitlines()
  header = lines[0].split(",")
  order = [1, 0, *range(2, len(header))]  # click and purchase exchanged (and the fields moved)
  order = order[:2] + order[2:][::-1]
  moved = [",".join(line.split(",")[i] for i in order) for line in lines]
  (tmp_path / "moved.csv").write_text("\n".join(moved) + "\n")
  a = csv_ingest.ingest(cfg, [str(AITM / "train/train.csv")], str(tmp_path / "a"), progress=False)
  b = csv_ingest.ingest(cfg, [str(tmp_path / "moved.csv")], str(tmp_path / "b"), progress=False)
  assert a["num_rows"] == b["num_rows"] > 0
  same_blocks(str(tmp_path / "a"), str(tmp_path / "b"))
  cfg.header = "yes"  # a header that differs from config.columns is read by name here too
  csv_ingest.ingest(cfg, [str(tmp_path / "moved.csv")], str(tmp_path / "c"), progress=False)
  same_blocks(str(tmp_path / "a"), str(tmp_path / "c"))


def test_duplicated_header_name_is_refused(tmp_path):
  path = write_csv(tmp_path / "dup.csv", [r + ["9"] for r in ROWS], header=HEADER + ["a"])
  with pytest.raises(
    ingestion.IngestError,
    match=rf"^{path}: the header names column\(s\) \['a'\] more than once; columns are read by "
    r"their header name, so give each column its own name$",
  ):
    ingest([path], tmp_path / "o")
  assert not (tmp_path / "o").exists()


# -- Parquet labels, empty outputs, swapped inputs ------------------------------------------------


def test_parquet_boolean_labels_read_as_labels(tmp_path):
  cols = list(zip(*ROWS, strict=True))
  table = {h: pa.array(c) for h, c in zip(HEADER, cols, strict=True)}
  ints = pa.table({**table, "click": pa.array([int(v) for v in cols[0]], pa.int64())})
  bools = pa.table(
    {
      **table,
      "click": pa.array([v == "1" for v in cols[0]]),
      "buy": pa.array([v == "1" for v in cols[1]]),
    }
  )
  pq.write_table(ints, tmp_path / "ints.parquet")
  pq.write_table(bools, tmp_path / "bools.parquet")
  a = ingest([str(tmp_path / "ints.parquet")], tmp_path / "a")
  b = ingest([str(tmp_path / "bools.parquet")], tmp_path / "b")
  assert a["num_rows"] == b["num_rows"] == len(ROWS)
  same_blocks(str(tmp_path / "a"), str(tmp_path / "b"))
  assert ds_lib.open_dataset(str(tmp_path / "b")).read_all()["labels"][:, 0].tolist() == [
    1,
    1,
    0,
    0,
    1,
  ]


def test_input_of_only_bad_rows_is_an_error_and_writes_nothing(tmp_path):
  rows = [["yes", "0", "u1", "x", "1"], ["no", "0", "u2", "y", "1"]]
  with pytest.raises(
    ingestion.IngestError,
    match=r"^no rows to write: the input\(s\) \[.*\] hold no good row \(bad lines: bad_label=2; "
    r"see config.bad_lines\)$",
  ):
    ingest([write_csv(tmp_path / "bad.csv", rows)], tmp_path / "o")
  assert not (tmp_path / "o").exists()


def test_aliccp_inputs_given_in_each_others_place_are_refused(tmp_path):
  sk, cf, _ = build_raw(tmp_path)
  with pytest.raises(aliccp.ConversionError, match=r"^the inputs look swapped: --skeleton=.*"):
    aliccp.convert(str(cf), str(sk), str(tmp_path / "o"), workers=1, progress=False)
  with pytest.raises(aliccp.ConversionError, match=r"has common-features rows \(3 columns"):
    aliccp.convert(str(cf), str(cf), str(tmp_path / "o"), workers=1, progress=False)
  with pytest.raises(aliccp.ConversionError, match=r"has skeleton rows \(6 columns\)"):
    aliccp.convert(str(sk), str(sk), str(tmp_path / "o"), workers=1, progress=False)
  assert not (tmp_path / "o").exists()


# -- long cells -----------------------------------------------------------------------------------


def test_cell_longer_than_the_cap_stops_naming_file_line_and_column(tmp_path):
  rows = [list(r) for r in ROWS]
  rows[2][3] = "v" * 5000  # line 4 (after the header)
  path = write_csv(tmp_path / "long.csv", rows)
  with pytest.raises(
    ingestion.IngestError,
    match=rf"^{path}:4: column 'b' holds a cell of 5,000 bytes, over config.max_cell_bytes=1,000 ",
  ):
    ingest([path], tmp_path / "o", cfg=config(max_cell_bytes=1000))
  assert not (tmp_path / "o").exists()
  assert ingest([path], tmp_path / "o")["num_rows"] == len(ROWS)  # under the default cap


def test_token_keys_take_memory_by_tokens_not_tokens_times_the_longest():
  # 5 000 tokens and one of 200 KB: a [tokens, longest] matrix would be 1 GB.
  short = b"".join(b"id%05d" % i for i in range(5000))
  data = np.frombuffer(short + b"z" * 200_000, np.uint8)
  starts = np.append(np.arange(5000) * 7, len(short))
  lengths = np.append(np.full(5000, 7), 200_000)
  tracemalloc.start()
  try:
    keys = ids_lib.token_keys(data, starts, lengths)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 64 << 20, peak
  np.testing.assert_array_equal(keys[:3], ids_lib.str_keys(["id00000", "id00001", "id00002"]))
  assert keys[-1] == ids_lib.str_keys([b"z" * 200_000])[0]
  assert len(np.unique(keys)) == 5001


# -- on the command line: one line, exit 2 --------------------------------------------------------


def _cli(module: str, *args: str):
  import subprocess
  import sys

  res = subprocess.run(
    [sys.executable, "-m", f"esmjax.data.{module}", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  lines = res.stderr.strip().splitlines()
  assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
  return lines[0]


def test_refusals_are_one_line_and_exit_2_on_the_command_line(tmp_path):
  (tmp_path / "cfg.py").write_text(
    "from esmjax.data.ingest.csv import ingest as csv_ingest\n\n\ndef get_config():\n"
    "  c = csv_ingest.base_config()\n  c.sparse = ('a', 'b')\n  c.dense = ('d',)\n  return c\n"
  )
  csv = write_csv(tmp_path / "t.csv", ROWS)
  out = tmp_path / "out"
  args = [f"--config={tmp_path / 'cfg.py'}", f"--input={csv}"]
  with ingestion.out_dir_lock(str(out)):
    line = _cli("csv_ingest", *args, f"--out_dir={out}")
  assert line.startswith(
    f"esmjax: error: another ingestion is writing to {out}: pid {os.getpid()} "
  )
  ingest([csv], tmp_path / "train")
  line = _cli("csv_ingest", *args, f"--out_dir={tmp_path}", f"--stats_from={tmp_path / 'train'}")
  assert line.startswith(f"esmjax: error: --out_dir={tmp_path} holds --stats_from=")
  sk, cf, _ = build_raw(tmp_path)
  line = _cli("aliccp", f"--skeleton={cf}", f"--common_features={sk}", f"--out_dir={out}")
  assert line.startswith("esmjax: error: the inputs look swapped: ")
