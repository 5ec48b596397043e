r"""ESMM (Ma et al., SIGIR 2018) on the embedded synthetic world.

  python -m esmjax.main --config=configs/esmm.py

Paper sizes: embedding dim 18, towers 200-80-1, ReLU, Adam for the towers (row-wise Adagrad for
the tables). The default trains 2 epochs over 1 M synthetic impressions and evaluates on 200 k; on a
2-core CPU it takes about a minute after data generation. Expected (seed 0): see the README's
"Results" table (CTR AUC ≈ 0.7, CVR AUC on clicked rows ≈ 0.7, entire-space CVR AUC ≈ 0.7).

On your own data (converted with esmjax.data.aliccp or esmjax.data.csv_ingest):
  python -m esmjax.main --config=configs/esmm.py --config.data.train_dir=D/train \
      --config.data.eval_dir=D/test
"""

from esmjax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.name = "esmm"
  config.train.num_epochs = 2.0
  return config
