r"""Raw Ali-CCP dump (sample_skeleton_* + common_features_*) -> blocked dataset: field layout.

    python -m esmjax.data.aliccp --config=configs/data/aliccp_raw.py \
        --skeleton=sample_skeleton_train.csv --common_features=common_features_train.csv \
        --out_dir=data/aliccp_train
    python -m esmjax.data.aliccp --config=configs/data/aliccp_raw.py \
        --stats_from=data/aliccp_train --skeleton=sample_skeleton_test.csv \
        --common_features=common_features_test.csv --out_dir=data/aliccp_test

Every field is hashed (deterministic, salted per field) into `buckets` ids shifted past PAD/OOV, so
the train and test conversions agree without a shared vocabulary. Multi-valued fields keep up to
`max_len` values with their weights (largest weights first when a list is longer); 508/509/702 also
give their value as a dense feature `<field>_value`. Override on the command line, e.g.
`'--config.fields["110_14"].max_len=64'` (quoted: numeric-looking keys need the
subscript form).

Expected on the train split (not run here, the dump is not on this machine): 42.3 M rows, 1.64 M
clicks, 9 k buys (the ESMM paper's Table 1: 84 M impressions, 3.4 M clicks, 18 k conversions over
both splits). Throughput: benchmarks/results/data_throughput.md.
"""

from esmjax.data.ingest.aliccp import convert as aliccp


def get_config():
  return aliccp.default_config()
