"""checkpoint.max_time_share: periodic saves spaced so they take at most that share of the wall
time (a fake clock and a fake checkpointer), never while the last one is still writing; share 0
saves at every checkpoint.every_steps; ranked and final saves are never skipped; and a real run
whose saves are spaced ends equal to one that saved at every step."""

from __future__ import annotations

import pytest
import tiny

from esmjax.config import compat
from esmjax.config import defaults as config_lib
from esmjax.training import checkpointing


class Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


class FakeCheckpointer:
  """Each save takes `blocked` seconds of the loop, then writes for `write` seconds."""

  def __init__(self, clock: Clock, blocked: float, write: float):
    self.clock, self.blocked, self.write = clock, blocked, write
    self.saved: list[int] = []
    self._until = -1.0

  def save(self, step, state, data_iter, metrics=None):
    self.clock.t += self.blocked
    self.saved.append(step)
    self._until = self.clock.t + self.write
    return True

  def writing(self) -> bool:
    return self.clock.t < self._until


class Guard:
  def check(self, step, state):
    pass


def _policy(share: float, clock: Clock, ckpt: FakeCheckpointer, every: int = 10, best: str = ""):
  config = tiny.tiny_config(
    **{
      "checkpoint.every_steps": every,
      "checkpoint.max_time_share": share,
      "checkpoint.best_metric": best,
    }
  )
  policy = checkpointing.CheckpointPolicy.__new__(checkpointing.CheckpointPolicy)
  policy.enabled, policy.every, policy.ranks_evaluations = True, every, bool(best)
  policy._data_iter, policy._guard, policy._ckpt = None, Guard(), ckpt
  policy.cadence = checkpointing.SaveCadence(
    float(compat.get(config, "checkpoint.max_time_share")), clock
  )
  return policy


def _train(policy, clock: Clock, steps: int, step_s: float, evaluate_every: int = 0):
  """The trainer's calls: should_save before (_syncs) and after (maybe_save) each step's
  evaluation, then a save when due."""
  for step in range(1, steps + 1):
    clock.t += step_s
    evaluated = bool(evaluate_every) and step % evaluate_every == 0
    first = policy.should_save(step, steps, evaluated)
    assert policy.should_save(step, steps, evaluated) == first  # decided once per step
    if first:
      policy.save(step, None)


def test_share_zero_saves_at_every_interval_however_slow_the_saves():
  clock = Clock()
  ckpt = FakeCheckpointer(clock, blocked=2.0, write=3.0)
  _train(_policy(0.0, clock, ckpt), clock, steps=100, step_s=0.01)
  assert ckpt.saved == list(range(10, 100, 10))


def test_saves_are_spaced_to_the_share_of_the_wall_time():
  clock = Clock()
  ckpt = FakeCheckpointer(clock, blocked=1.0, write=1.0)  # a save costs 2 s start to written
  _train(_policy(0.125, clock, ckpt), clock, steps=1000, step_s=0.125)  # (exact binary times)
  # The first periodic save is due; each next one no sooner than 2 s / 0.125 = 16 s after the
  # last started: 1 s blocked + 120 steps of 0.125 s.
  assert ckpt.saved == list(range(10, 1000, 120))
  # So the saves take 2 s of every 16: the share.
  assert (2.0 / (1.0 + 120 * 0.125)) == 0.125


def test_no_periodic_save_while_the_last_one_is_writing():
  clock = Clock()
  ckpt = FakeCheckpointer(clock, blocked=0.0, write=5.0)
  # With share 0.99 the spacing alone would allow the next interval; the write still runs.
  _train(_policy(0.99, clock, ckpt), clock, steps=60, step_s=0.25)  # 10 steps: 2.5 s < 5 s
  # Step 10 saves at 2.5 s and writes until 7.5 s: steps 20 and 30 (5 s, 7.5 s) find it writing
  # or just done (too soon for 5 s / 0.99); step 40 (10 s) saves; step 50 finds that one writing.
  assert ckpt.saved == [10, 40]


def test_ranked_saves_are_never_spaced():
  clock = Clock()
  ckpt = FakeCheckpointer(clock, blocked=5.0, write=5.0)
  _train(
    _policy(0.01, clock, ckpt, best="cvr/auc"), clock, steps=60, step_s=0.01, evaluate_every=20
  )
  assert ckpt.saved == [10, 20, 40]  # 10: the first periodic; 20, 40: after evaluations


def test_the_share_is_checked_and_absent_means_every_interval():
  config = tiny.tiny_config()
  config.checkpoint.max_time_share = 1.5
  with pytest.raises(config_lib.ConfigError, match="checkpoint.max_time_share"):
    config_lib.validate(config)
  del config.checkpoint["max_time_share"]
  config_lib.validate(config)  # a config saved before the key existed
  assert compat.get(config, "checkpoint.max_time_share") == 0.0
  assert config_lib.default_config().checkpoint.max_time_share == 0.05


def test_a_run_with_spaced_saves_ends_equal_to_one_saving_at_every_step(
  data, tmp_path, monkeypatch
):
  from esmjax.checkpoints import checkpoint as ckpt_lib
  from esmjax.training import trainer

  saved: list[int] = []
  real_save = ckpt_lib.Checkpointer.save

  def spy(self, step, *args, **kwargs):
    saved.append(step)
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ckpt_lib.Checkpointer, "save", spy)
  base = {
    "data.train_dir": str(data / "train"),
    "data.eval_dir": str(data / "eval"),
    "train.num_steps": 16,
    "checkpoint.every_steps": 1,
  }
  every = trainer.train_and_evaluate(
    tiny.tiny_config(**base, **{"checkpoint.max_time_share": 0.0}), str(tmp_path / "every")
  )
  assert saved == list(range(1, 17))
  saved.clear()
  # A tiny save takes milliseconds, a tiny step less: at 1 % of the time, one save in ~100 steps.
  spaced = trainer.train_and_evaluate(
    tiny.tiny_config(**base, **{"checkpoint.max_time_share": 0.01}), str(tmp_path / "spaced")
  )
  assert saved[0] == 1 and saved[-1] == 16 and len(saved) < 16
  assert spaced["state_fingerprint"] == every["state_fingerprint"]
  assert spaced["metrics"] == every["metrics"]
