r"""BASE (ESMM paper): the CVR tower trained on clicked impressions only.

The CTCVR task follows the paper's protocol for non-ESMM models: pCTCVR = pCTR × pCVR with an
independently trained CTR network of the same structure (its own embedding table).

  python -m esmjax.main --config=configs/baselines/base.py

Same sizes and data as configs/esmm.py (paper: embedding 18, towers 200-80-1); only what differs
is set here. `--config=configs/baselines/<name>.py:paper` trains on the paper-regime world
(esmjax.data.synthetic.worlds.WORLDS, see configs/esmm.py). Regenerated in experiments/ (results in
experiments/results/).
"""

from esmjax.config import presets


def get_config(arg: str = ""):
  a = presets.parse_arg(arg, world="default")
  config = presets.model_config("base", a.world)
  return config
