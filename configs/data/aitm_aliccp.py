r"""PaddleRec AITM (Xi et al.) preprocessed Ali-CCP CSV -> blocked dataset.

    S=tests/data/public-samples/PaddleRec/models/multitask/aitm/data/sample_data
    python -m esmjax.data.csv_ingest --config=configs/data/aitm_aliccp.py \
        --input=$S/train/train.csv --out_dir=/tmp/aitm_train
    python -m esmjax.data.csv_ingest --config=configs/data/aitm_aliccp.py \
        --stats_from=/tmp/aitm_train --input=$S/test/test.csv --out_dir=/tmp/aitm_test

Columns `click,purchase,101,...,301` (18 id fields, re-encoded; 0 = OOV/missing in the source, kept
as a value of its own). The train file has a header, the test file has none: `columns` names
them and `header='auto'` recognises either. User key: field 101.
Expected on the public samples: 48 rows (3 clicks, 3 purchases) and 49 rows.
"""

from esmjax.data.ingest.csv import ingest as csv_ingest

FIELDS = (
  "101",
  "121",
  "122",
  "124",
  "125",
  "126",
  "127",
  "128",
  "129",
  "205",
  "206",
  "207",
  "216",
  "508",
  "509",
  "702",
  "853",
  "301",
)


def get_config():
  c = csv_ingest.base_config()
  c.name = "PaddleRec AITM ali-ccp"
  c.columns = ("click", "purchase") + FIELDS
  c.header = "auto"
  c.labels = {"click": "click", "buy": "purchase"}
  c.sparse = FIELDS
  c.user = "101"
  c.id_mapping = "vocab"
  return c
