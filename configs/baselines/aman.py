r"""AMAN (ESMM paper): BASE plus unclicked impressions sampled as CVR negatives at `rate`.

pCTCVR = pCTR × pCVR with an independently trained CTR network (the paper's protocol).

  python -m esmjax.main --config=configs/baselines/aman.py[:rate=0.1,world=paper]

The paper reports rates 10 %, 20 %, 50 % and 100 % (`rate=0.1` ... `rate=1`; default 0.1).

Same sizes and data as configs/esmm.py (paper: embedding 18, towers 200-80-1); only what differs
is set here. `--config=configs/baselines/<name>.py:paper` trains on the paper-regime world
(esmjax.data.synthetic.worlds.WORLDS, see configs/esmm.py). Regenerated in experiments/ (results in
experiments/results/).
"""

from esmjax.config import presets


def get_config(arg: str = ""):
  a = presets.parse_arg(arg, world="default", rate=0.1)
  config = presets.model_config("aman", a.world)
  config.model.aman_rate = a.rate
  return config
