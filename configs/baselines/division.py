r"""DIVISION (ESMM paper): independent CTR and CTCVR networks; pCVR = min(pCTCVR / pCTR, 1).

  python -m esmjax.main --config=configs/baselines/division.py

Same sizes and data as configs/esmm.py (paper: embedding 18, towers 200-80-1); only what differs
is set here. `--config=configs/baselines/<name>.py:paper` trains on the paper-regime world
(esmjax.data.synthetic.worlds.WORLDS, see configs/esmm.py). Regenerated in experiments/ (results in
experiments/results/).
"""

from esmjax.config import presets


def get_config(arg: str = ""):
  a = presets.parse_arg(arg, world="default")
  config = presets.model_config("division", a.world)
  return config
