r"""UNBIAS (ESMM paper): BASE with clicked rows reweighted by 1/pCTR (pCTR floored at
model.unbias_min_pctr), pCTR from the independently trained CTR network (stop-gradient).

The paper cites rejection sampling with pCTR as rejection probability; weighting each clicked row
by 1/pCTR is its expectation (importance weighting) without discarding rows.

  python -m esmjax.main --config=configs/baselines/unbias.py

Same sizes and data as configs/esmm.py (paper: embedding 18, towers 200-80-1); only what differs
is set here. `--config=configs/baselines/<name>.py:paper` trains on the paper-regime world
(esmjax.data.synthetic.worlds.WORLDS, see configs/esmm.py). Regenerated in experiments/ (results in
experiments/results/).
"""

from esmjax.config import presets


def get_config(arg: str = ""):
  a = presets.parse_arg(arg, world="default")
  config = presets.model_config("unbias", a.world)
  return config
