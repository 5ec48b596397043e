r"""torch-rechub's preprocessed Ali-CCP CSV -> blocked dataset.

    S=tests/data/public-samples/torch-rechub/examples/ranking/data/ali-ccp
    python -m esmjax.data.csv_ingest --config=configs/data/rechub_aliccp.py \
        --input=$S/ali_ccp_train_sample.csv --out_dir=/tmp/rechub_train
    python -m esmjax.data.csv_ingest --config=configs/data/rechub_aliccp.py \
        --stats_from=/tmp/rechub_train --input=$S/ali_ccp_test_sample.csv --out_dir=/tmp/rechub_test

Header `click,purchase,<23 id columns>,D<8 dense>`: ids already re-encoded per field (small
integers), so a vocabulary (collision-free) is the mapping; the dense columns are the
behaviour-list / combination values. User key: field 101.
Expected on the public sample: 100 rows, 7 clicks, 1 purchase, no bad lines.
"""

from esmjax.data.ingest.csv import ingest as csv_ingest

SPARSE = (
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
  "210",
  "216",
  "508",
  "509",
  "702",
  "853",
  "301",
  "109_14",
  "110_14",
  "127_14",
  "150_14",
)
DENSE = ("D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853")


def get_config():
  c = csv_ingest.base_config()
  c.name = "torch-rechub ali-ccp"
  c.labels = {"click": "click", "buy": "purchase"}
  c.sparse = SPARSE
  c.dense = DENSE
  c.user = "101"
  c.id_mapping = "vocab"
  return c
