"""What a run reads: its datasets, how many steps it takes, and the training batch iterator."""

from __future__ import annotations

import math

import jax
import ml_collections

from esmjax.config import defaults as config_lib
from esmjax.data.format import dataset as ds_lib
from esmjax.data.pipeline import batches as pipeline


def resolve_datasets(config: ml_collections.ConfigDict) -> tuple[ds_lib.Dataset, ds_lib.Dataset]:
  """The configured datasets, or the synthetic default (generated once, then cached)."""
  if config.data.train_dir:
    return ds_lib.open_dataset(config.data.train_dir), ds_lib.open_dataset(config.data.eval_dir)
  from esmjax.data.synthetic import cache as synthetic

  train_dir, eval_dir = synthetic.ensure_dataset(config.data.synthetic, config.data.cache_dir)
  return ds_lib.open_dataset(train_dir), ds_lib.open_dataset(eval_dir)


def num_train_steps(config: ml_collections.ConfigDict, train_ds: ds_lib.Dataset) -> int:
  """train.num_steps, or the steps of train.num_epochs over the used fraction of the rows.

  A batch larger than those rows is refused (ConfigError): each batch would hold every row more
  than once (100 000 of 40 000 rows: each 2.5 times in one step), which no epoch count describes.
  """
  rows = train_ds.num_rows * config.data.train_fraction
  if config.train.batch_size > rows:
    used = (
      f"{int(rows)} training rows ({train_ds.num_rows} in {train_ds.directory})"
      if config.data.train_fraction == 1
      else f"{int(rows)} training rows (data.train_fraction={config.data.train_fraction} of "
      f"{train_ds.num_rows} in {train_ds.directory})"
    )
    raise config_lib.ConfigError(
      f"train.batch_size={config.train.batch_size} is larger than the {used}: every batch would "
      "hold rows more than once; use a batch size no larger than the training rows"
    )
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return max(1, int(math.ceil(config.train.num_epochs * rows / config.train.batch_size)))


def make_train_iter(config: ml_collections.ConfigDict, train_ds: ds_lib.Dataset):
  """This process's training batches (batch_size / process_count rows each), endless; a grain
  iterator whose position a checkpoint saves."""
  pc = jax.process_count()
  cfg = pipeline.PipelineConfig(
    batch_size=config.train.batch_size // pc,
    seed=config.train.seed,
    window_blocks=config.data.window_blocks,
    prefetch=config.data.prefetch,
    fraction=config.data.train_fraction,
  )
  dataset = pipeline.train_iter_dataset(
    train_ds, cfg, process_index=jax.process_index(), process_count=pc
  )
  return iter(dataset)


def close_iter(it) -> None:
  """Stops an iterator's background threads (grain's prefetch), if it has any."""
  close = getattr(it, "close", None)
  if close is not None:
    close()
