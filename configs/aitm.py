r"""AITM (Xi et al., KDD 2021): click → conversion towers with Adaptive Information Transfer and
the behavioural expectation calibrator, on the embedded synthetic world.

  python -m esmjax.main --config=configs/aitm.py [--workdir=DIR]

Two towers on shared embeddings; the conversion tower attends over its own representation and the
information transferred from the click tower; loss BCE(click, pCTR) + BCE(click∧buy, pCTCVR)
+ 0.6·mean(max(pCTCVR − pCTR, 0)); pCVR = min(pCTCVR / pCTR, 1) (esmjax/models/aitm.py). Same
sizes, data and schedule as configs/esmm.py (towers 200-80, embedding 18, 977 steps of 1024).

Expected (seed 0, 200 k eval impressions, one run; float32 summation order moves these in the
third decimal):

  task        AUC     GAUC   log-loss
  ctr       0.707    0.691    0.184
  cvr       0.748    0.709    0.267     (clicked impressions only)
  ctcvr     0.781    0.769    0.026
  entire-space CVR AUC (pCVR vs would-buy, all impressions): 0.735
"""

from esmjax.config import presets


def get_config(arg: str = ""):
  a = presets.parse_arg(arg, world="default")
  config = presets.model_config("aitm", a.world)
  config.model.aitm_calibrator_weight = 0.6  # α of the calibrator (the paper's and PaddleRec's)
  return config
