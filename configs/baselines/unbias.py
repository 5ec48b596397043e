r"""UNBIAS (ESMM paper): BASE with clicked rows reweighted by 1/pCTR (pCTR floored at
model.unbias_min_pctr), pCTR from the independently trained CTR network (stop-gradient).

The paper cites rejection sampling with pCTR as rejection probability; weighting each clicked row
by 1/pCTR is its expectation (importance weighting) without discarding rows.

  python -m esmjax.main --config=configs/baselines/unbias.py

Same sizes and data as configs/esmm.py (paper: embedding 18, towers 200-80-1); only what differs
is set here. `--config=configs/baselines/<name>.py:paper` trains on the paper-regime world
(esmjax.data.synthetic.cache.WORLDS, see configs/esmm.py). Regenerated in experiments/ (results in
experiments/results/).
"""

from esmjax.config import defaults as config_lib


def get_config(world: str = "default"):
  config = config_lib.default_config(world)
  config.model.name = "unbias"
  config.train.batch_size = 1024  # the schedule of configs/esmm.py: batch 1024, one epoch
  config.train.num_epochs = 1.0
  return config
