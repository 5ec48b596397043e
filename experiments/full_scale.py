r"""The Ali-CCP public set's size on one machine: raw files -> converted -> ESMM and BASE trained ->
the whole test split scored, with time, memory and disk per stage.

    python -m experiments.full_scale [--scale=0.01] [--workdir=workdirs/full_scale] [--seed=0]
        [--fit_from=OTHER_WORKDIR] [--out=experiments/results] [--name=full_scale] [--buckets=0]

Stages, each in its own process (its peak RSS is its process tree's, sampled every 0.2 s), each
with a progress bar and ETA, each skipped when `<workdir>/stages.json` says it finished:

  generate       `esmjax.data.synthetic.aliccp_world`: the raw world (gzip skeleton +
                 common-features files,
                 ground truth) at `--scale` of the public set's 42.3 M + 43.0 M impressions
  convert_train  `esmjax.data.aliccp` on the training files (reads .gz streaming)
  convert_test   the same on the test files, `--stats_from` the training split
  train_esmm     configs/esmm.py, one epoch, batch 1,024 (the trainer's resume: a killed run goes
  train_base     on from its latest checkpoint); configs/baselines/base.py the same
  predict_esmm   the whole test split scored with the latest checkpoint: predictions to
  predict_base   `<workdir>/predictions_<model>.parquet` (sample_id, pctr, pcvr, pctcvr), metrics
                 against the labels and the generator's ground truth (entire-space CVR AUC)

`--buckets=N` caps every field's hash buckets at N (the test suite's tiny run; 0, the default,
keeps configs/data/aliccp_raw.py's, a million for the id fields, whatever the scale).

A killed run is resumed by the same command: finished stages are skipped, a stage cut short
continues from what it left (the generator's finished files, the converter's finished ranges, the
trainer's checkpoints). The command stops (exit 2) when the workdir holds a run of another scale or
seed, and (exit 3) before a stage whose estimated need of disk exceeds the free space, naming both.

Results: `<out>/<name>.md` and `.json`: per stage wall time, rows/s, peak RSS, what the workdir
holds after it; the metrics table; and the extrapolation to scale 1. With `--fit_from` (the
workdir of a run at another scale) each stage's time and peak RSS are fitted as a + b * rows
through the two runs; without, time is scaled by rows and RSS is reported as measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time

import psutil

from benchmarks import reporting
from esmjax import exits
from esmjax.core import host_memory
from esmjax.data.format.files import read_json, write_json_atomic
from esmjax.data.synthetic import aliccp_world
from experiments import full_scale_stages as st

STAGES = tuple(st.STAGES)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Disk a stage needs, per row it handles (measured on the generated world, with 1.5x margin): raw
# files (skeleton + common features gzip, truth), a converted split (lz4 blocks, 62 B/row:
# benchmarks/results/block_codec.md), predictions. Checkpoints: per table row (embedding dim 18 +
# row-wise accumulator, float32) times the checkpoints kept at once (3 + 1 being written).
_GEN_BYTES_PER_ROW = 1.5 * 95
_CONVERT_BYTES_PER_ROW = 1.5 * 100
_PRED_BYTES_PER_ROW = 1.5 * 16
_CKPT_KEEP = 3  # the shipped configs' checkpoint.keep
_CKPT_BYTES_PER_TABLE_ROW = 4 * 19 * (_CKPT_KEEP + 1)


def _train_bar(workdir: str, name: str, stop: threading.Event) -> None:
  """A progress bar over the trainer's steps, read from its metrics.jsonl (the trainer logs every
  `train.log_every` steps)."""
  import json

  from tqdm import tqdm

  ds = os.path.join(st.paths(workdir)["data_train"], "manifest.json")
  rows = (read_json(ds) or {}).get("num_rows", 0)
  bar = tqdm(total=-(-rows // st.BATCH), desc=f"train {name}", unit="step", mininterval=1)
  path = os.path.join(st.paths(workdir)[f"run_{name}"], "metrics.jsonl")
  pos = 0
  while not stop.wait(1.0):
    if not os.path.exists(path):
      continue
    with open(path) as f:
      f.seek(pos)
      for line in f:
        try:
          step = json.loads(line).get("step", 0)
        except ValueError:
          break
        bar.update(max(0, step - bar.n))
      pos = f.tell()
  bar.close()


def need_bytes(stage: str, workdir: str, scale: float) -> int:
  """An upper estimate of the disk `stage` will add."""
  rows = aliccp_world.split_rows(scale)
  if stage == "generate":
    return int(_GEN_BYTES_PER_ROW * sum(rows.values()))
  if stage.startswith("convert_"):
    return int(_CONVERT_BYTES_PER_ROW * rows[stage.split("_")[1]])
  if stage.startswith("predict_"):
    return int(_PRED_BYTES_PER_ROW * rows["test"])
  manifest = read_json(os.path.join(st.paths(workdir)["data_train"], "manifest.json")) or {}
  schema = manifest.get("schema", {})
  table_rows = sum(f.get("vocab_size", 0) for k in ("sparse", "multi") for f in schema.get(k, []))
  return int(_CKPT_BYTES_PER_TABLE_ROW * table_rows)


def check_space(stage: str, workdir: str, scale: float) -> None:
  need, free = need_bytes(stage, workdir, scale), shutil.disk_usage(workdir).free
  if need > free:
    exits.fail(
      f"full_scale: stage {stage} needs ~{need / 1e9:.1f} GB of disk, {workdir} has "
      f"{free / 1e9:.1f} GB free: free space or pass a smaller --scale",
      exits.CANNOT_GO_ON,
    )


def run_stage(stage: str, workdir: str, scale: float, seed: int, buckets: int) -> dict:
  """Runs one stage in a child process; its record with wall time, peak RSS and disk."""
  cmd = [sys.executable, "-m", "experiments.full_scale_stages", stage, workdir, str(scale)]
  t0, load0 = time.time(), reporting.load_average()
  # The environment `python -m esmjax.main` restarts itself in (malloc on huge pages): each stage
  # runs as a user's command would.
  env = host_memory.cli_malloc_env(os.environ)
  proc = subprocess.Popen(cmd + [str(seed), str(buckets)], cwd=REPO, env=env)
  ps, peak, peak_anon = psutil.Process(proc.pid), 0, 0
  stop = threading.Event()
  bar = None
  if stage.startswith("train_"):
    bar = threading.Thread(target=_train_bar, args=(workdir, stage[6:], stop), daemon=True)
    bar.start()
  try:
    while proc.poll() is None:
      peak = max(peak, reporting.tree_rss(ps))
      peak_anon = max(peak_anon, reporting.tree_rss(ps, anonymous=True))
      time.sleep(0.2)
  finally:
    stop.set()
    if proc.poll() is None:
      proc.terminate()
  if bar is not None:
    bar.join(timeout=5)
  if proc.returncode != 0:
    exits.fail(f"full_scale: stage {stage} failed (exit {proc.returncode})", proc.returncode)
  rec = read_json(os.path.join(workdir, f"stage-{stage}.json"))
  wall = time.time() - t0
  rec.update(
    seconds=round(wall, 2),
    rows_per_s=rec["rows"] / max(wall, 1e-9),
    peak_rss_bytes=peak,
    peak_anonymous_rss_bytes=peak_anon,
    workdir_bytes=st.dir_bytes(workdir),
    free_bytes_after=shutil.disk_usage(workdir).free,
    load_before=load0,
    load_after=reporting.load_average(),
  )
  return rec


def run_all(workdir: str, scale: float, seed: int, buckets: int = 0) -> dict:
  os.makedirs(workdir, exist_ok=True)
  state_path = os.path.join(workdir, "stages.json")
  state = read_json(state_path) or {"scale": scale, "seed": seed, "buckets": buckets, "stages": {}}
  if (state["scale"], state["seed"], state.get("buckets", 0)) != (scale, seed, buckets):
    exits.fail(
      f"full_scale: {workdir} holds a run at scale {state['scale']}, seed {state['seed']}, "
      f"buckets {state.get('buckets', 0)}; pass another --workdir (or delete it)",
      exits.USER_ERROR,
    )
  for stage in STAGES:
    if stage in state["stages"]:
      print(f"full_scale: {stage}: done earlier, skipped", flush=True)
      continue
    check_space(stage, workdir, scale)
    print(f"full_scale: {stage} ...", flush=True)
    state["stages"][stage] = run_stage(stage, workdir, scale, seed, buckets)
    write_json_atomic(state_path, state, indent=1)
  return state


# ---------------------------------------------------------------------------------------------
# The results file.


def _gb(b: float) -> str:
  return f"{b / 1e9:,.2f} GB"


def _seconds_at(stage: str, r: dict, n1: int) -> tuple[float, str]:
  """A stage's seconds at n1 rows: its fixed part (start-up, compile, table init, checkpoint
  restore and save) as measured, its per-row part at the rate measured in this run."""
  if stage.startswith("train_"):
    per_row = 1.0 / r["trainer_examples_per_sec"]
    fixed = max(0.0, r["seconds"] - r["rows"] * per_row)
    return fixed + n1 * per_row, "fixed part + rows / the trainer's ex/s"
  if stage.startswith("predict_"):
    varying = r["score_seconds"] + r["metrics_seconds"]
    return r["seconds"] - varying + varying * n1 / r["rows"], "fixed part + scoring x rows"
  return r["seconds"] * n1 / max(r["rows"], 1), "time x rows"


def _common_table_bytes(state: dict, split: str, scale: float) -> float:
  """The converter's common-features table for a split at `scale` (one row of every block column
  per common row, memory-mapped by each of its processes)."""
  from esmjax.data.format import blocks
  from esmjax.data.ingest.aliccp import convert as aliccp

  rows = state["stages"]["generate"]["world"]["splits"][split]["common_rows"]
  return (
    rows
    / state["scale"]
    * scale
    * blocks.row_bytes(aliccp.compile_config(aliccp.default_config()).schema)
  )


def extrapolate(state: dict, other: dict | None) -> dict[str, dict]:
  """Per stage: seconds and peak RSS at scale 1, and how they were obtained.

  Peak RSS: the predict stages hold per-row arrays (predictions, labels, users, truth, and the
  metrics' sorts), so theirs is fitted as a + b·rows through this run and `other` (a run at another
  scale); the trainer's pipeline and the converter's segments are bounded by design, so theirs is
  the measured peak, plus, for the converter, the growth of its common-features table (mapped by
  the converting process and each worker); the generator holds its entity tables, fitted too.
  """
  split1 = aliccp_world.split_rows(1.0)
  rows1 = {"generate": sum(split1.values()), "convert_train": split1["train"]}
  rows1.update({f"train_{m}": split1["train"] for m in st.MODELS})
  out = {}
  for stage, r in state["stages"].items():
    n1 = rows1.get(stage, split1["test"])
    sec, how_t = _seconds_at(stage, r, n1)
    o = (other or {}).get("stages", {}).get(stage)
    rss, how_m = r["peak_rss_bytes"], "RSS as measured (bounded)"
    if stage.startswith("convert_"):
      split = stage.split("_")[1]
      grow = _common_table_bytes(state, split, 1.0) - _common_table_bytes(
        state, split, state["scale"]
      )
      workers = os.cpu_count() or 1
      rss += (workers + 1) * grow
      how_m = f"RSS measured + common table growth x {workers + 1} processes"
    elif o and o["rows"] != r["rows"] and stage.split("_")[0] in ("predict", "generate"):
      b = (r["peak_rss_bytes"] - o["peak_rss_bytes"]) / (r["rows"] - o["rows"])
      rss += max(0.0, b) * (n1 - r["rows"])
      how_m = f"RSS a + b·rows through scales {other['scale']} and {state['scale']}"
    out[stage] = {"rows": n1, "seconds": sec, "peak_rss_bytes": rss, "how": f"{how_t}; {how_m}"}
  return out


def disk_at_scale_1(state: dict) -> dict[str, float]:
  """What the path keeps at once, by part, at scale 1: the data parts scale with rows; a
  checkpoint does not (its tables are the hash buckets, whatever the rows), but at scale 1 each run
  holds `checkpoint.keep` (3) of them plus the one being written (its 41 k steps pass the 1,000-step
  interval many times; the scaled-down runs may have written one)."""
  s, stages = state["scale"], state["stages"]
  raw = stages["generate"]["out_bytes"] / s
  data = (stages["convert_train"]["out_bytes"] + stages["convert_test"]["out_bytes"]) / s
  runs = 0.0
  for m in st.MODELS:
    t = stages[f"train_{m}"]
    each = t["checkpoint_bytes"] / max(len(t["checkpoint_steps"]), 1)
    runs += t["out_bytes"] - t["checkpoint_bytes"] + each * (_CKPT_KEEP + 1)
  preds = sum(stages[f"predict_{m}"]["out_bytes"] for m in st.MODELS) / s
  return {
    "raw": raw,
    "converted": data,
    "runs": runs,
    "predictions": preds,
    "total": raw + data + runs + preds,
  }


def markdown(state: dict, ext: dict, disk1: dict, command: str, prov: dict) -> str:
  from benchmarks.reporting import markdown_table

  stg = state["stages"]
  rows = []
  for name, r in stg.items():
    e = ext[name]
    rows.append(
      [
        name,
        f"{r['rows']:,}",
        f"{r['seconds']:.1f}",
        f"{r['rows_per_s']:,.0f}",
        _gb(r["peak_rss_bytes"])
        + (f" ({_gb(r['peak_anonymous_rss_bytes'])})" if "peak_anonymous_rss_bytes" in r else ""),
        _gb(r["workdir_bytes"]),
        f"{e['seconds'] / 60:.1f}",
        _gb(e["peak_rss_bytes"]),
        e["how"],
      ]
    )
  total = sum(r["seconds"] for k, r in stg.items() if k != "generate")
  total1 = sum(e["seconds"] for k, e in ext.items() if k != "generate")
  mrows = []
  for m in st.MODELS:
    x = stg[f"predict_{m}"]["metrics"]
    mrows.append(
      [
        m.upper(),
        x["cvr/auc"],
        x.get("cvr/population_auc", float("nan")),
        x.get("cvr/entire_space_auc", float("nan")),
        x.get("cvr/entire_space_population_auc", float("nan")),
        x.get("cvr/entire_space_oracle_auc", float("nan")),
        x["ctcvr/auc"],
        x["ctr/auc"],
        x["ctr/calibration"],
        x["cvr/calibration"],
        x["ctcvr/calibration"],
      ]
    )
  w = stg["generate"]["world"]
  sp = w["splits"]
  lines = [
    "# The Ali-CCP public set's size on one machine (experiments/full_scale.py)",
    "",
    f"Command: `{command}`. {reporting.code_line(prov)}Machine: {prov['machine']['cpu']}, "
    f"{prov['machine']['cores']} cores; load average {prov['load_before']} before, "
    f"{reporting.load_average()} after (a shared machine: times are upper bounds).",
    "",
    f"World (`esmjax.data.synthetic.aliccp_world`, seed {w['seed']}): "
    f"scale **{state['scale']}** of the "
    f"public set: {sp['train']['rows']:,} training impressions ({sp['train']['clicks']:,} clicks, "
    f"{sp['train']['buys']:,} buys), {sp['test']['rows']:,} test impressions "
    f"({sp['test']['clicks']:,} clicks, {sp['test']['buys']:,} buys); "
    + ", ".join(f"{v:,} {k}" for k, v in w["sizes"].items())
    + ".",
    "",
    "## Stages",
    "",
    markdown_table(
      [
        "stage",
        "rows",
        "wall s",
        "rows/s",
        "peak RSS (without mapped files)",
        "workdir after",
        "scale 1: min",
        "scale 1: peak RSS",
        "scale 1: how",
      ],
      rows,
    ),
    "",
    f"The path without generation: **{total / 60:.1f} min** here; **{total1 / 60:.0f} min** "
    "extrapolated to scale 1 (last column: how; the rates are this run's, on a shared machine).",
    "",
    "Disk at scale 1, everything the path keeps at once (measured bytes / scale; runs: one "
    f"checkpoint as measured x {_CKPT_KEEP + 1}, kept and in flight, as their tables do not grow "
    "with rows): " + ", ".join(f"{k} {_gb(v)}" for k, v in disk1.items()) + ".",
    "",
    "## Metrics (whole test split)",
    "",
    markdown_table(
      [
        "model",
        "CVR AUC (clicked)",
        "CVR population AUC",
        "entire-space CVR AUC",
        "entire-space population AUC",
        "entire-space oracle AUC",
        "CTCVR AUC",
        "CTR AUC",
        "CTR calibration",
        "CVR calibration",
        "CTCVR calibration",
      ],
      mrows,
    ),
    "",
    "Calibration: mean prediction / mean label (1 = calibrated). Population AUCs score against "
    "the true pCVR, entire-space ones over all impressions against would-buy; the oracle AUC is "
    "the true pCVR's own entire-space AUC, the ceiling of any model in this world "
    "(`esmjax.evaluation.metrics.evaluate`).",
    "",
    "## Sizes that grow with the data",
    "",
  ]
  for m in st.MODELS:
    t, p = stg[f"train_{m}"], stg[f"predict_{m}"]
    lines.append(
      f"- {m.upper()}: training {t['trainer_examples_per_sec']:,.0f} ex/s (the trainer's own "
      f"count, steps only); checkpoints {_gb(t['checkpoint_bytes'])} ({len(t['checkpoint_steps'])} "
      f"kept), one save {p['checkpoint_save_seconds']:.1f} s, restore "
      f"{p['restore_seconds']:.1f} s; scoring {p['score_seconds']:.1f} s, metrics "
      f"{p['metrics_seconds']:.1f} s; predictions file {_gb(p['out_bytes'])} "
      f"({p['out_bytes'] / max(p['rows'], 1):.1f} B/row); stray ids {p['stray_ids']}."
    )
  for s in ("train", "test"):
    c = stg[f"convert_{s}"]
    lines.append(
      f"- converted {s}: {c['bytes_per_row']:.0f} B/row ({_gb(c['out_bytes'])}) from "
      f"{_gb(c['input_bytes'])} of gzip input."
    )
  return "\n".join(lines) + "\n"


def write_results(state: dict, other: dict | None, out: str, name: str, command: str) -> str:
  prov = reporting.provenance(command)
  ext = extrapolate(state, other)
  disk1 = disk_at_scale_1(state)
  md = markdown(state, ext, disk1, command, prov)
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, f"{name}.md")
  with open(path, "w") as f:
    f.write(f"<!-- written by `{command}`; regenerate, do not edit -->\n" + md)
  write_json_atomic(
    os.path.join(out, f"{name}.json"),
    {**prov, "run": state, "fit_from": other, "scale_1": ext, "disk_scale_1": disk1},
    indent=1,
  )
  return path


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--scale", type=float, default=0.01)
  ap.add_argument("--workdir", default="workdirs/full_scale")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--fit_from", default=None, help="workdir of a finished run at another scale")
  ap.add_argument("--out", default=os.path.join(REPO, "experiments", "results"))
  ap.add_argument("--name", default="full_scale")
  ap.add_argument(
    "--buckets", type=int, default=0, help="cap every field's hash buckets (0: as shipped; tests)"
  )
  args = ap.parse_args(argv)
  if not 0 < args.scale <= 1:
    exits.fail(f"full_scale: --scale={args.scale}; must be in (0, 1]", exits.USER_ERROR)
  workdir = os.path.abspath(args.workdir)
  other = None
  if args.fit_from:
    other = read_json(os.path.join(args.fit_from, "stages.json"))
    if other is None or set(other["stages"]) != set(STAGES):
      exits.fail(f"full_scale: --fit_from={args.fit_from} holds no finished run", exits.USER_ERROR)
  if args.buckets < 0:
    exits.fail(f"full_scale: --buckets={args.buckets}; must be >= 0", exits.USER_ERROR)
  state = run_all(workdir, args.scale, args.seed, args.buckets)
  command = reporting.command_line(argv, __file__)
  path = write_results(state, other, args.out, args.name, command)
  print(f"wrote {path}", flush=True)
  return state


if __name__ == "__main__":
  main()
