"""Scoring refuses a dataset whose inputs differ from the trained model's, naming the difference.

The datasets are real ingestions of the public torch-rechub Ali-CCP sample: the training split,
the test split with the training vocabularies (`stats_from`), the test split with its own
vocabularies, and the test split with one dense column fewer.
"""

import dataclasses
import os

import numpy as np
import pytest
import tiny

import esmjax
from esmjax.data.format import dataset as D
from esmjax.data.ingest.csv import ingest as csv_ingest
from esmjax.serving import predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECHUB = os.path.join(
  REPO, "tests", "data", "public-samples", "torch-rechub", "examples", "ranking", "data", "ali-ccp"
)


def rechub_config():
  return tiny.repo_config("configs/data/rechub_aliccp.py")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("schema")
  cfg = rechub_config()
  sample = lambda split: [os.path.join(RECHUB, f"ali_ccp_{split}_sample.csv")]
  train = str(root / "train")
  csv_ingest.ingest(cfg, sample("train"), train, progress=False)
  csv_ingest.ingest(cfg, sample("test"), str(root / "test"), stats_from=train, progress=False)
  csv_ingest.ingest(cfg, sample("test"), str(root / "own_vocab"), progress=False)
  fewer = rechub_config()
  fewer.dense = fewer.dense[:-1]
  csv_ingest.ingest(
    fewer, sample("test"), str(root / "one_dense_less"), stats_from=train, progress=False
  )
  config = tiny.tiny_config("esmm", **{"train.num_steps": 2})
  config.data.train_dir, config.data.eval_dir = train, str(root / "test")
  esmjax.train(config, str(root / "wd"))
  return root, config


def first_vocab_difference(a: D.Schema, b: D.Schema):
  """(field, size in a, size in b) of the first single-valued field whose vocabularies differ."""
  for fa, fb in zip(a.sparse, b.sparse, strict=True):
    if fa.vocab_size != fb.vocab_size:
      return fa.name, fa.vocab_size, fb.vocab_size
  return None


def test_the_training_vocabularies_score(world):
  root, _ = world
  model = esmjax.load(str(root / "wd"))
  preds = model.predict(str(root / "test"))
  assert len(preds["pctr"]) == 50 and np.all((preds["pctr"] > 0) & (preds["pctr"] < 1))
  assert model.evaluate(str(root / "test"))["n/impressions"] == 50


def test_own_vocabularies_are_refused_naming_the_field(world):
  root, config = world
  model = esmjax.load(str(root / "wd"))
  own = D.open_dataset(str(root / "own_vocab"))
  name, trained, theirs = first_vocab_difference(model.schema, own.schema)
  assert trained != theirs  # the test split's own vocabulary is smaller than the training one
  want = f"single-valued field {name!r}: vocab_size {trained} vs {theirs}"
  for call in (model.predict, model.evaluate):
    with pytest.raises(D.DatasetError) as e:
      call(own.directory)
    assert str(e.value).startswith(f"{own.directory}: its inputs differ from the trained model's")
    assert want in str(e.value) and "--stats_from" in str(e.value)
  config = config.copy_and_resolve_references()
  config.data.eval_dir = own.directory
  with pytest.raises(D.DatasetError, match=want):
    predict.evaluate_workdir(config, str(root / "wd"))


def test_a_missing_dense_column_is_refused(world):
  root, _ = world
  model = esmjax.load(str(root / "wd"))
  fewer = D.open_dataset(str(root / "one_dense_less"))
  names = [f.name for f in model.schema.dense]
  with pytest.raises(D.DatasetError) as e:
    model.predict(fewer)
  assert f"dense fields differ: {names} vs {names[:-1]}" in str(e.value)


def test_cli_predict_refuses_with_one_line_and_exit_2(world, tmp_path):
  root, config = world
  out = tmp_path / "preds.csv"
  flags = [
    f"--config.data.train_dir={config.data.train_dir}",
    f"--config.data.eval_dir={config.data.eval_dir}",
    "--config.model.hidden=8,4",
    "--config.model.embed_dim=4",
    "--config.train.batch_size=64",
    "--config.train.eval_batch_size=128",
    "--config.mesh.num_devices=1",
  ]
  r = tiny.run_cli(
    [
      "--config=configs/esmm.py",
      *flags,
      f"--workdir={root / 'wd'}",
      "--mode=predict",
      f"--predict_input={root / 'own_vocab'}",
      f"--predict_output={out}",
    ]
  )
  assert r.returncode == 2, r.stderr[-3000:]
  err = [l for l in r.stderr.splitlines() if l.startswith("esmjax: error:")]
  assert len(err) == 1
  assert "its inputs differ from the trained model's (single-valued field" in err[0]
  assert "Traceback" not in r.stderr and not out.exists()


# -- Schema.input_difference: every part of a model's inputs, nothing else ------------------------


R = dataclasses.replace


@pytest.mark.parametrize(
  "change, want",
  [
    (
      lambda s: R(s, sparse=s.sparse[:2]),
      "single-valued fields differ: ['user', 'item', 'ctx'] vs ['user', 'item']",
    ),
    (
      lambda s: R(s, sparse=(s.sparse[1], s.sparse[0], s.sparse[2])),
      "single-valued fields differ: ['user', 'item', 'ctx'] vs ['item', 'user', 'ctx']",
    ),
    (
      lambda s: R(s, sparse=(D.SparseField("user", 13),) + s.sparse[1:]),
      "single-valued field 'user': vocab_size 12 vs 13",
    ),
    (
      lambda s: R(s, multi=(D.MultiField("hist", 9, 4, "sum"), s.multi[1])),
      "multi-valued field 'hist': max_len 3 vs 4",
    ),
    (
      lambda s: R(s, multi=(s.multi[0], D.MultiField("tags", 6, 2, "sum"))),
      "multi-valued field 'tags': pooling 'mean' vs 'sum'",
    ),
    (
      lambda s: R(s, multi=(D.MultiField("hist", 10, 3, "sum"), s.multi[1])),
      "multi-valued field 'hist': vocab_size 9 vs 10",
    ),
    (
      lambda s: R(s, dense=(D.DenseField("price", 1.5, 2.0, (0.0, 1.0, 2.5)), s.dense[1])),
      "dense field 'price': mean 1.0 vs 1.5",
    ),
    (
      lambda s: R(s, dense=(s.dense[0], D.DenseField("age", 0.5, 3.0, (0.0, 0.5, 1.0)))),
      "dense field 'age': std 1.0 vs 3.0",
    ),
    (
      lambda s: R(s, dense=(D.DenseField("price", 1.0, 2.0, (0.0, 1.0)), s.dense[1])),
      "dense field 'price': boundaries (0.0, 1.0, 2.5) vs (0.0, 1.0)",
    ),
  ],
)
def test_input_difference_names_the_first_difference(change, want):
  s = tiny.tiny_schema()
  assert s.input_difference(change(s)) == want


def test_input_difference_ignores_labels_truth_groups_and_json_round_trips():
  s = tiny.tiny_schema()
  other = dataclasses.replace(
    s,
    labels=("click", "buy"),
    truth=(),
    sparse=(D.SparseField("user", 12, group="item"),) + s.sparse[1:],
  )
  assert s.input_difference(other) is None
  assert s.input_difference(D.Schema.from_json(s.to_json())) is None
  nan = dataclasses.replace(s, dense=(D.DenseField("price", float("nan"), 2.0), s.dense[1]))
  assert nan.input_difference(dataclasses.replace(nan)) is None  # NaN statistics equal themselves
