r"""OVERSAMPLING (ESMM paper): BASE with each click→buy positive copied `k` times.

pCTCVR = pCTR × pCVR with an independently trained CTR network (the paper's protocol).

  python -m esmjax.main --config=configs/baselines/oversampling.py[:k=5,world=paper]

The paper reports ×2, ×3, ×5 and ×10 (`k=2` ... `k=10`; default 5).

Same sizes and data as configs/esmm.py (paper: embedding 18, towers 200-80-1); only what differs
is set here. `--config=configs/baselines/<name>.py:paper` trains on the paper-regime world
(esmjax.data.synthetic.worlds.WORLDS, see configs/esmm.py). Regenerated in experiments/ (results in
experiments/results/).
"""

from esmjax.config import presets


def get_config(arg: str = ""):
  a = presets.parse_arg(arg, world="default", k=5.0)
  config = presets.model_config("oversampling", a.world)
  config.model.oversample_k = a.k
  return config
