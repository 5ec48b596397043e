"""All orbax calls live here: one Composite of train state + grain iterator state + config.

Restores go through abstract targets that carry the *current* run's shardings, so a checkpoint
written on N devices resumes on M.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

CKPT_DIR = "checkpoints"


def _abstract(shape_tree, sharding_tree):
  return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                shape_tree, sharding_tree)


class Checkpointer:
  """Saves every `checkpoint.every_steps` and at the end; restores the latest on start."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, run):
    self.directory = os.path.abspath(os.path.join(workdir, CKPT_DIR))
    self.config = config
    self.run = run
    opts = ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint.keep, create=True,
                                        enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(self.directory, options=opts)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iter, metrics: dict[str, Any] | None = None, force: bool = False):
    args = {"state": ocp.args.StandardSave(state),
            "config": ocp.args.JsonSave(json.loads(self.config.to_json_best_effort()))}
    if isinstance(data_iter, grain.DatasetIterator):
      args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore_latest(self, data_iter=None):
    """The latest state (with the current shardings) and the data iterator's position, or None."""
    step = self.manager.latest_step()
    if step is None:
      return None
    return self.restore(step, data_iter)

  def restore(self, step: int, data_iter=None):
    target = _abstract(self.run.state_shape, self.run.state_sharding)
    args = {"state": ocp.args.StandardRestore(target)}
    if isinstance(data_iter, grain.DatasetIterator):
      args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = self.manager.restore(step, args=ocp.args.Composite(**args))
    logging.info("restored checkpoint step %d from %s", step, self.directory)
    return out["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
