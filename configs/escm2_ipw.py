r"""ESCM²-IPW (Wang et al., SIGIR 2022): ESMM plus an inverse-propensity-weighted counterfactual
CVR risk on the embedded synthetic world.

  python -m esmjax.main --config=configs/escm2_ipw.py [--workdir=DIR]

CTR and CVR towers on shared embeddings, pCTCVR = pCTR·pCVR (as ESMM); loss
L_CTR + 0.5·R_IPW + 0.5·L_CTCVR with R_IPW = mean(click·BCE(buy, pCVR) / max(pCTR, 0.05)), the
propensity without gradient (esmjax/models/escm2_ipw.py states the exact form). Same sizes, data
and schedule as configs/esmm.py (977 steps of 1024).

Expected (seed 0, 200 k eval impressions, one run; float32 summation order moves these in the
third decimal):

  task        AUC     GAUC   log-loss
  ctr       0.707    0.689    0.184
  cvr       0.748    0.695    0.264     (clicked impressions only)
  ctcvr     0.777    0.769    0.026
  entire-space CVR AUC (pCVR vs would-buy, all impressions): 0.735
"""

from esmjax.config import presets


def get_config(arg: str = ""):
  a = presets.parse_arg(arg, world="default")
  config = presets.model_config("escm2_ipw", a.world)
  config.model.escm2_loss_weights = (1.0, 0.5, 0.5)  # w_ctr, w_cvr (IPW risk), w_ctcvr: PaddleRec's
  config.model.escm2_min_pctr = 0.05  # propensity floor: 1/pCTR weights at most 20
  return config
