r"""ESCM²-DR (Wang et al., SIGIR 2022): ESMM plus a doubly robust counterfactual CVR risk on the
embedded synthetic world.

  python -m esmjax.main --config=configs/escm2_dr.py [--workdir=DIR]

CTR, CVR and imputation towers on shared embeddings, pCTCVR = pCTR·pCVR (as ESMM); loss
L_CTR + 0.5·(R_DR + L_IMP) + 0.5·L_CTCVR, where the imputation tower predicts each impression's
CVR error and R_DR corrects it on clicked rows by 1/max(pCTR, 0.05) (esmjax/models/escm2_dr.py
states the exact form and its gradient stops). Same sizes, data and schedule as configs/esmm.py.

Expected (seed 0, 200 k eval impressions, one run; float32 summation order moves these in the
third decimal):

  task        AUC     GAUC   log-loss
  ctr       0.707    0.688    0.184
  cvr       0.747    0.692    0.265     (clicked impressions only)
  ctcvr     0.777    0.768    0.026
  entire-space CVR AUC (pCVR vs would-buy, all impressions): 0.735
"""

from esmjax.config import presets


def get_config(arg: str = ""):
  a = presets.parse_arg(arg, world="default")
  config = presets.model_config("escm2_dr", a.world)
  config.model.escm2_loss_weights = (1.0, 0.5, 0.5)  # w_ctr, w_cvr (DR risk + imputation), w_ctcvr
  config.model.escm2_min_pctr = 0.05  # propensity floor: 1/pCTR weights at most 20
  return config
