r"""AliExpress (MTReclib layout; FuxiCTR tiny_mtl, torch-rechub sample) CSV -> blocked dataset.

    S=tests/data/public-samples/FuxiCTR/data/tiny_mtl
    python -m esmjax.data.csv_ingest --config=configs/data/aliexpress.py \
        --input=$S/train.csv --out_dir=/tmp/aliexpress_train
    python -m esmjax.data.csv_ingest --config=configs/data/aliexpress.py \
        --stats_from=/tmp/aliexpress_train --input=$S/test.csv --out_dir=/tmp/aliexpress_test

Columns `search_id, categorical_1..16, numerical_1..63, click, conversion`. The dataset has no user
id: `search_id` (one search's impressions) is the GAUC group key, and not a feature.
Expected on FuxiCTR tiny_mtl/train.csv: 100 rows, 3 clicks, 2 conversions.
"""

from esmjax.data.ingest.csv import ingest as csv_ingest


def get_config():
  c = csv_ingest.base_config()
  c.name = "AliExpress"
  c.labels = {"click": "click", "buy": "conversion"}
  c.sparse = tuple(f"categorical_{i}" for i in range(1, 17))
  c.dense = tuple(f"numerical_{i}" for i in range(1, 64))
  c.user = "search_id"
  c.id_mapping = "vocab"
  return c
