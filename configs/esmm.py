r"""ESMM (Ma et al., SIGIR 2018) on the embedded synthetic world.

  python -m esmjax.main --config=configs/esmm.py [--workdir=DIR]

Paper sizes: embedding dim 18, towers 200-80-1 on the concatenated embeddings, ReLU, Adam (1e-3)
for the towers, row-wise Adagrad (0.05) for the tables; batch 4096, 2 epochs over 1 M synthetic
impressions (489 steps), evaluated on 200 k. The first run generates the world once (cached under
~/.cache/esmjax); training then takes about a minute on an idle 2-core CPU.

Expected (seed 0, 200 k eval impressions; engine revisions have moved these by up to 0.006):

  task        AUC     GAUC   log-loss
  ctr       0.676    0.677    0.199
  cvr       0.725    0.697    0.275     (clicked impressions only)
  ctcvr     0.735    0.730    0.028
  entire-space CVR AUC (pCVR vs would-buy, all impressions): 0.703

Afterwards: `python -m esmjax.plot DIR` (curves.png), `tensorboard --logdir DIR/tensorboard`,
`--mode=export --export_path=esmm.jaxexport` (a serving artifact), `esmjax.load(DIR)` in Python.

On your own data (converted with esmjax.data.aliccp or esmjax.data.csv_ingest):
  python -m esmjax.main --config=configs/esmm.py --config.data.train_dir=D/train \
      --config.data.eval_dir=D/test
"""

from esmjax import config as config_lib


def get_config():
  config = config_lib.default_config()  # every key, with its one-line comment: esmjax/config.py
  config.model.name = "esmm"  # pCTCVR = pCTR · pCVR; loss on CTR and CTCVR over all impressions
  config.train.num_epochs = 2.0  # 2 × 1 M impressions at batch 4096 = 489 steps
  return config
