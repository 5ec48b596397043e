r"""ESM2 / ESM² (Wen et al., SIGIR 2020): impression → click → DAction / OAction → buy.

  python -m esmjax.main --config=configs/esm2.py [--workdir=DIR]

Four heads on shared embeddings (pCTR; pDAction given click; pBuy given DAction; pBuy given
OAction); DAction = add-to-cart or wish-list; loss w1·CTR + w2·CTAVR + w3·CTCVR (weights 1, 1, 1).
Same sizes, data and schedule as configs/esmm.py (489 steps of 4096).

Expected (seed 0, 200 k eval impressions; engine revisions have moved these by up to 0.006):

  task        AUC     GAUC   log-loss
  ctr       0.676    0.678    0.198
  cvr       0.729    0.692    0.276     (clicked impressions only)
  ctcvr     0.742    0.727    0.028
  ctavr     0.701    0.669    0.056
  entire-space CVR AUC (pCVR vs would-buy, all impressions): 0.703

Afterwards: `python -m esmjax.plot DIR`, `tensorboard --logdir DIR/tensorboard`, `--mode=export`,
`esmjax.load(DIR)`, as for configs/esmm.py.
"""

from esmjax import config as config_lib


def get_config():
  config = config_lib.default_config()  # every key, with its one-line comment: esmjax/config.py
  config.model.name = "esm2"  # four heads: CTR, DAction|click, buy|DAction, buy|OAction
  config.train.num_epochs = 2.0  # 2 × 1 M impressions at batch 4096 = 489 steps
  return config
