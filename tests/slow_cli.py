"""`python tests/slow_cli.py --config=...`: the command line (`esmjax.main`) with a test hook that
sleeps ESMJAX_TEST_STEP_DELAY_S seconds after every dispatch, so that tests can signal or kill a
real run mid-way. A script, not a test module."""

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from esmjax import main
from esmjax.training import trainer
from esmjax.training.hooks import Hooks

DELAY_S = float(os.environ.get("ESMJAX_TEST_STEP_DELAY_S", "0"))

trainer.train_and_evaluate = functools.partial(
  trainer.train_and_evaluate, hooks=Hooks(after_dispatch=lambda step: time.sleep(DELAY_S))
)

if __name__ == "__main__":
  main.run()
