r"""ESM2 / ESM² (Wen et al., SIGIR 2020): impression → click → DAction / OAction → buy.

  python -m esmjax.main --config=configs/esm2.py [--workdir=DIR]

Four heads on shared embeddings (pCTR; pDAction given click; pBuy given DAction; pBuy given
OAction); DAction = add-to-cart or wish-list; loss w1·CTR + w2·CTAVR + w3·CTCVR (weights 1, 1, 1).
Same sizes, data and schedule as configs/esmm.py (977 steps of 1024).

Expected (seed 0, 200 k eval impressions; float32 summation order, which differs between machines
and library versions, moves these in the third decimal):

  task        AUC     GAUC   log-loss
  ctr       0.710    0.691    0.183
  cvr       0.756    0.699    0.266     (clicked impressions only)
  ctcvr     0.785    0.768    0.026
  ctavr     0.743    0.699    0.051
  entire-space CVR AUC (pCVR vs would-buy, all impressions): 0.739

Afterwards: `python -m esmjax.plot DIR`, `tensorboard --logdir DIR/tensorboard`, `--mode=export`,
`esmjax.load(DIR)`, as for configs/esmm.py.
"""

from esmjax.config import presets


def get_config(arg: str = ""):
  a = presets.parse_arg(arg, world="default")
  # four heads: CTR, DAction|click, buy|DAction, buy|OAction
  return presets.model_config("esm2", a.world)
