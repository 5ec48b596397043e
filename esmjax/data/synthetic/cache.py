"""A synthetic Ali-CCP-like world with known ground truth: the default dataset of esmjax.

`synthetic_config` holds the knobs and states the causal process; `synthetic_world` draws the world
and its impressions. Here: writing a split (`generate`), the cache of generated worlds
(`ensure_dataset`), their statistics (`world_stats`) and the command line.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import socket
import time

import numpy as np

from esmjax import exits
from esmjax.common import digest
from esmjax.data.format import dataset as ds_lib
from esmjax.data.synthetic.generator import World, build_world, iter_blocks
from esmjax.data.synthetic.worlds import (  # noqa: F401  (the synthetic world's public names)
  DENSE_FIELDS,
  LABELS,
  SPLITS,
  TRUTH,
  WORLDS,
  build_schema,
  default_config,
  resolve_config,
  world_config,
)

GENERATOR = "esmjax.data.synthetic"
GENERATOR_VERSION = 1  # bump when the process changes: it is part of the cache key


def config_hash(cfg) -> str:
  """The cache key of a world: its generator, its config and the dataset format it is written in."""
  cfg = resolve_config(cfg)
  blob = json.dumps(
    {
      "generator": GENERATOR,
      "version": GENERATOR_VERSION,
      "config": cfg.to_dict(),
      "format": ds_lib.VERSION,
      "sealed": digest.KEY,  # manifests with digests: a cache written without them is redone
    },
    sort_keys=True,
  )
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Writing and caching.


def generate(cfg, out_dir: str, split: str, world: World | None = None) -> dict:
  """Writes one split ('train' or 'eval') of the world of `cfg` to `out_dir`; returns the
  manifest."""
  cfg = resolve_config(cfg)
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; allowed: {list(SPLITS)}")
  if world is None:
    world = build_world(cfg)
  elif world.cfg.to_dict() != cfg.to_dict():
    raise ValueError("generate: `world` was built from another config than `cfg`")
  source = {
    "generator": GENERATOR,
    "version": GENERATOR_VERSION,
    "split": split,
    "seed": int(cfg.seed),
    "config_hash": config_hash(cfg),
    "config": cfg.to_dict(),
    "intercepts": {"c_ctr": world.c_ctr, "c_daction": world.c_daction, "c_cvr": world.c_cvr},
  }
  return ds_lib.write_dataset(
    out_dir,
    world.schema,
    iter_blocks(world, split),
    block_rows=cfg.block_rows,
    blocks_per_shard=cfg.blocks_per_shard,
    source=source,
  )


def _complete(root: str) -> bool:
  return all(os.path.exists(os.path.join(root, s, ds_lib.MANIFEST)) for s in ("train", "eval"))


_TMP = re.compile(r"^synthetic-[0-9a-f]+\.tmp-(\d+)(?:-(.+))?$")


def remove_stale_temporaries(cache_dir: str) -> list[str]:
  """Removes the temporary world directories (`synthetic-<hash>.tmp-<pid>-<host>`) of generations
  that died (SIGKILL, power loss) on this host: their pid no longer runs. Another host's, and a
  live process's, are left alone. Returns the paths removed (each logged with its size)."""
  host, removed = socket.gethostname(), []
  for name in sorted(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else ():
    m = _TMP.match(name)
    if not m or (m.group(2) is not None and m.group(2) != host) or _alive(int(m.group(1))):
      continue
    path = os.path.join(cache_dir, name)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    shutil.rmtree(path, ignore_errors=True)
    print(
      f"synthetic: removed {path} ({size / 2**20:.0f} MB), left by generation process "
      f"{m.group(1)}, which no longer runs",
      flush=True,
    )
    removed.append(path)
  return removed


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def ensure_dataset(cfg, cache_dir: str) -> tuple[str, str]:
  """(train_dir, eval_dir) of the world of `cfg` under `cache_dir/synthetic-<hash>`, generated once.

  Written into a temporary directory renamed into place, so an interrupted run never leaves a
  directory that looks complete; the temporaries of killed generations are removed first
  (`remove_stale_temporaries`).
  """
  cfg = resolve_config(cfg)
  root = os.path.join(cache_dir, f"synthetic-{config_hash(cfg)}")
  dirs = (os.path.join(root, "train"), os.path.join(root, "eval"))
  rows = cfg.num_train + cfg.num_eval
  t0 = time.perf_counter()
  if _complete(root):
    print(
      f"synthetic: reused {rows:,} rows ({cfg.num_train:,} train + {cfg.num_eval:,} eval) "
      f"from {root} in {time.perf_counter() - t0:.2f} s",
      flush=True,
    )
    return dirs
  os.makedirs(cache_dir, exist_ok=True)
  remove_stale_temporaries(cache_dir)
  tmp = f"{root}.tmp-{os.getpid()}-{socket.gethostname()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    world = build_world(cfg)
    for split in ("train", "eval"):
      generate(cfg, os.path.join(tmp, split), split, world=world)
    if os.path.exists(root) and not _complete(root):
      shutil.rmtree(root)  # an incomplete leftover from elsewhere
    try:
      os.rename(tmp, root)
    except OSError:
      if not _complete(root):  # someone else finished first: keep theirs; otherwise fail loudly
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(
    f"synthetic: generated {rows:,} rows ({cfg.num_train:,} train + {cfg.num_eval:,} eval) "
    f"into {root} in {time.perf_counter() - t0:.2f} s",
    flush=True,
  )
  return dirs


# ---------------------------------------------------------------------------------------------
# Statistics.


def world_stats(dataset_dir: str) -> dict[str, float]:
  """Label rates and, where truth is present, the selection bias made visible."""
  ds = ds_lib.open_dataset(dataset_dir)
  sch = ds.schema
  li = {k: sch.labels.index(k) for k in sch.labels}
  ti = {k: sch.truth.index(k) for k in sch.truth}
  acc: dict[str, float] = {}

  def add(k, v):
    acc[k] = acc.get(k, 0.0) + float(v)

  src = ds.block_source()
  for i in range(len(src)):
    b = src[i]
    lab = b["labels"]
    click = lab[:, li["click"]].astype(bool)
    add("rows", len(click))
    add("clicks", click.sum())
    for k in ("buy", "cart", "wish", "daction"):
      if k in li:
        add(k, lab[:, li[k]].sum())
    if "daction" in li and "buy" in li:
      d, buy = lab[:, li["daction"]].astype(bool), lab[:, li["buy"]].astype(bool)
      add("buy_daction", (buy & d).sum())
    if "truth" in b and sch.truth:
      t = b["truth"].astype(np.float64)
      for k in ("pctr", "pcvr", "pdaction", "would_buy"):
        if k in ti:
          add(f"{k}_all", t[:, ti[k]].sum())
          add(f"{k}_clicked", t[click, ti[k]].sum())
  n, c = max(acc.get("rows", 0.0), 1.0), max(acc.get("clicks", 0.0), 1.0)
  out = {
    "rows": int(acc.get("rows", 0)),
    "clicks": int(acc.get("clicks", 0)),
    "ctr": acc.get("clicks", 0.0) / n,
  }
  if "buy" in acc:
    out.update(
      buys=int(acc["buy"]), cvr_given_click=acc["buy"] / c, buys_per_impression=acc["buy"] / n
    )
  for k in ("daction", "cart", "wish"):
    if k in acc:
      out[f"{k}_per_click"] = acc[k] / c
  if "buy_daction" in acc:
    nd = max(acc["daction"], 1.0)
    out["buy_given_daction"] = acc["buy_daction"] / nd
    out["buy_given_oaction"] = (acc["buy"] - acc["buy_daction"]) / max(c - acc["daction"], 1.0)
  for k in ("pctr", "pcvr", "pdaction", "would_buy"):
    if f"{k}_all" in acc:
      out[f"mean_{k}_all"] = acc[f"{k}_all"] / n
      out[f"mean_{k}_clicked"] = acc[f"{k}_clicked"] / c
  if "pcvr_all" in acc:
    unclicked = max(n - acc.get("clicks", 0.0), 1.0)
    out["mean_pcvr_unclicked"] = (acc["pcvr_all"] - acc["pcvr_clicked"]) / unclicked
    out["selection_ratio"] = out["mean_pcvr_clicked"] / max(out["mean_pcvr_all"], 1e-12)
  return out


def main(argv) -> None:
  """python -m esmjax.data.synthetic [cache_dir] [--world=paper] [--set=cvr=0.01 ...]: generates the
  world (once; cached in cache_dir, default data_cache) and prints its statistics per split."""
  from absl import flags

  if len(argv) > 2:
    exits.fail(f"unexpected arguments: {argv[2:]} (one cache directory at most)", exits.USER_ERROR)
  cache = argv[1] if len(argv) > 1 else "data_cache"
  overrides = {}
  for item in flags.FLAGS.set:
    key, sep, value = item.partition("=")
    if not sep:
      exits.fail(f"--set={item!r}: give knob=value, e.g. --set=cvr=0.01", exits.USER_ERROR)
    try:
      overrides[key] = ast.literal_eval(value)  # numbers as numbers
    except (ValueError, SyntaxError):
      overrides[key] = value
  with exits.exit_codes((ValueError,)):  # an unknown world or knob, a value out of range
    cfg = world_config(flags.FLAGS.world, **overrides)
  with exits.exit_codes(exits.PATH_ERRORS, run_errors=(OSError,)):
    dirs = dict(zip(("train", "eval"), ensure_dataset(cfg, cache), strict=True))
  for name, d in dirs.items():
    st = world_stats(d)
    print(name, json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in st.items()}))


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("world", "default", f"a named world: {', '.join(WORLDS)}")
  flags.DEFINE_multi_string("set", [], "knob=value overrides of the world, e.g. --set=cvr=0.01")
  app.run(main, flags_parser=exits.parse_flags)
