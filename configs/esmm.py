r"""ESMM (Ma et al., SIGIR 2018) on the embedded synthetic world.

  python -m esmjax.main --config=configs/esmm.py [--workdir=DIR]

Paper sizes: embedding dim 18, towers 200-80-1 on the concatenated embeddings, ReLU, Adam (1e-3)
for the towers, row-wise Adagrad (0.05) for the tables; batch 1024 (the paper's 1,000), 1 epoch
over 1 M synthetic impressions (977 steps), evaluated on 200 k. The first run generates the world
once (cached under ~/.cache/esmjax); training then takes about 30 s on a 2-core CPU.

Expected (seed 0, 200 k eval impressions; float32 summation order, which differs between machines
and library versions, moves these in the third decimal; the spread over seeds is in
experiments/results/esmm_table.md):

  task        AUC     GAUC   log-loss
  ctr       0.707    0.690    0.184
  cvr       0.751    0.699    0.266     (clicked impressions only)
  ctcvr     0.777    0.765    0.026
  entire-space CVR AUC (pCVR vs would-buy, all impressions): 0.734

Afterwards: `python -m esmjax.plot DIR` (curves.png), `tensorboard --logdir DIR/tensorboard`,
`--mode=export --export_path=esmm.jaxexport` (a serving artifact), `esmjax.load(DIR)` in Python.

On your own data (converted with esmjax.data.aliccp or esmjax.data.csv_ingest):
  python -m esmjax.main --config=configs/esmm.py --config.data.train_dir=D/train \
      --config.data.eval_dir=D/test
"""

from esmjax.config import presets


def get_config(arg: str = ""):
  a = presets.parse_arg(arg, world="default")
  # pCTCVR = pCTR · pCVR; loss on CTR and CTCVR over all impressions
  return presets.model_config("esmm", a.world)
