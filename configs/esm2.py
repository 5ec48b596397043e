r"""ESM2 / ESM² (Wen et al., SIGIR 2020): impression → click → DAction / OAction → buy.

  python -m esmjax.main --config=configs/esm2.py

Four heads on shared embeddings (pCTR; pDAction given click; pBuy given DAction; pBuy given
OAction); DAction = add-to-cart or wish-list. Same sizes and data as configs/esmm.py; the README's
"Results" table lists the expected metrics (CTAVR AUC is reported too).
"""

from esmjax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.name = "esm2"
  config.train.num_epochs = 2.0
  return config
