r"""AMAN (ESMM paper) at 100 %: BASE plus every unclicked impression as a CVR negative (rate 1.0).

pCTCVR = pCTR × pCVR with an independently trained CTR network (the paper's protocol).

  python -m esmjax.main --config=configs/baselines/aman_100.py

Same sizes and data as configs/esmm.py (paper: embedding 18, towers 200-80-1); only what differs
is set here. `--config=configs/baselines/<name>.py:paper` trains on the paper-regime world
(esmjax.data.synthetic.cache.WORLDS, see configs/esmm.py). Regenerated in experiments/ (results in
experiments/results/).
"""

from esmjax.config import defaults as config_lib


def get_config(world: str = "default"):
  config = config_lib.default_config(world)
  config.model.name = "aman"
  config.model.aman_rate = 1.0
  config.train.batch_size = 1024  # the schedule of configs/esmm.py: batch 1024, one epoch
  config.train.num_epochs = 1.0
  return config
