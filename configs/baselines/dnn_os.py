r"""DNN-OS (ESM2 paper): DNN with click→buy positives oversampled (copied ×5).

pCTCVR = pCTR × pCVR with an independently trained CTR network of the same structure.

  python -m esmjax.main --config=configs/baselines/dnn_os.py

Same sizes and data as configs/esmm.py (paper: embedding 18, towers 200-80-1); only what differs
is set here. `--config=configs/baselines/<name>.py:paper` trains on the paper-regime world
(esmjax.data.synthetic.worlds.WORLDS, see configs/esmm.py). Regenerated in experiments/ (results in
experiments/results/).
"""

from esmjax.config import presets


def get_config(arg: str = ""):
  a = presets.parse_arg(arg, world="default")
  config = presets.model_config("dnn_os", a.world)
  config.model.oversample_k = 5.0
  return config
