r"""The evaluation's metrics over N rows: sorted on the device (esmjax.evaluation.device_metrics)
against the host path (predictions to NumPy, esmjax.evaluation.metrics), interleaved in one process.

    python benchmarks/eval_metrics.py                  # 4 M rows (the CPU default), 3 rounds
    python benchmarks/eval_metrics.py --rows 43000000  # the Ali-CCP training half, on a GPU

The rows are an evaluation set's columns as the evaluator holds them (pctr, pcvr, pctcvr float32,
click / buy labels, int64 users, truth would_buy and pcvr), generated on the device. Device: the
whole `device_metrics.evaluate` (AUC, GAUC, log-loss, calibration of ctr / cvr on clicked rows /
ctcvr, entire-space and population AUCs, logit spreads), its first call (compilation) reported
apart. Host: the columns copied to NumPy, then `metrics.evaluate` and `metrics.logit_std` (what
evaluation.compute_metrics runs). Rates are rows/s, medians over rounds; the host copy's bytes are
what the host path must hold (the device path holds none of it). Writes eval_metrics.{json,md}
into --out_dir.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import numpy as np


@dataclasses.dataclass
class Opts(harness.Options):
  rows: int = harness.opt(4_000_000, "rows of the evaluation set")
  rounds: int = 3
  skip_host: bool = harness.opt(False, "the device path only")


def make_columns(n: int, seed: int = 0):
  """An evaluation set on the device: tied scores, ~4 % clicks, ~2 % of clicks buy."""
  import jax
  import jax.numpy as jnp

  k = jax.random.split(jax.random.PRNGKey(seed), 6)
  click = jax.random.uniform(k[0], (n,)) < 0.04
  buy = click & (jax.random.uniform(k[1], (n,)) < 0.02)
  would_buy = buy | (~click & (jax.random.uniform(k[2], (n,)) < 0.005))
  quant = lambda x: jnp.round(x * 4096) / 4096  # noqa: E731  (float32 scores with many ties)
  pctr = quant(jax.random.uniform(k[3], (n,), minval=0.001, maxval=0.2))
  pcvr = quant(jax.random.uniform(k[4], (n,), minval=0.001, maxval=0.05))
  with jax.enable_x64(True):
    users = jax.random.randint(k[5], (n,), 0, max(n // 30, 2), dtype=jnp.int64)
  preds = {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr}
  labels = {"click": click.astype(jnp.uint8), "buy": buy.astype(jnp.uint8)}
  truth = {"would_buy": would_buy.astype(jnp.float32), "pcvr": pcvr}
  return jax.block_until_ready((preds, labels, users, truth))


def on_device(cols) -> dict:
  from esmjax.evaluation import device_metrics

  out, spreads = device_metrics.evaluate(*cols)
  return out


def on_host(cols) -> tuple[dict, int]:
  import jax

  from esmjax.evaluation import metrics

  preds, labels, users, truth = jax.device_get(cols)
  nbytes = sum(np.asarray(a).nbytes for d in (preds, labels, truth) for a in d.values())
  nbytes += np.asarray(users).nbytes
  out = metrics.evaluate(preds, labels, users, truth=truth)
  for p in preds.values():
    metrics.logit_std(p)
  return out, nbytes


def main(argv=None) -> int:
  args = harness.parse(Opts, argv, __doc__)
  import jax

  res = harness.Record("eval_metrics", args, backend=jax.default_backend())
  res["device"] = str(jax.devices()[0].device_kind)
  cols = make_columns(args.rows)
  t = time.perf_counter()
  dev_out = on_device(cols)
  res["device_first_s"] = time.perf_counter() - t
  dev_s, host_s = [], []
  for _ in range(args.rounds):  # interleaved: the machine's load falls on both alike
    t = time.perf_counter()
    on_device(cols)
    dev_s.append(time.perf_counter() - t)
    if not args.skip_host:
      t = time.perf_counter()
      host_out, res["host_bytes"] = on_host(cols)
      host_s.append(time.perf_counter() - t)
  res["device_s"], res["host_s"] = dev_s, host_s
  if host_s:
    diffs = [
      abs(dev_out[k] - host_out[k]) / max(abs(host_out[k]), 1e-300)
      for k in host_out
      if host_out[k] == host_out[k]
    ]
    res["max_rel_diff"] = max(diffs)
  res["peak_rss_mb"] = harness.peak_rss_mb()
  res.finish()
  dev, host = float(np.median(dev_s)), float(np.median(host_s)) if host_s else float("nan")
  md = "\n".join(
    [
      f"# Evaluation metrics over {args.rows:,} rows: on the device vs on the host ({res['when']})",
      "",
      f"Backend **{res['backend']}** ({res['device']}), {res['machine']['cpu']}, "
      f"{res['machine']['cores']} usable cores; load average before/after {res['load_before']} / "
      f"{res['load_after']}.",
      "",
      harness.code_line(res) + f"Command: `{res['command']}`",
      "",
      harness.markdown_table(
        ["path", "median s", "rows/s", "rounds", "note"],
        [
          [
            "device (esmjax.evaluation.device_metrics)",
            dev,
            args.rows / dev,
            len(dev_s),
            f"first call (compilation) {res['device_first_s']:.1f} s; no host copy",
          ],
          [
            "host (esmjax.evaluation.metrics)",
            host,
            args.rows / host if host_s else "–",
            len(host_s),
            f"holds {res.get('host_bytes', 0) / 2**20:,.0f} MB of columns on the host"
            if host_s
            else "skipped",
          ],
        ],
      ),
      "",
      f"Host / device time: {host / dev:.2f}×; largest relative difference of the metrics "
      f"{res.get('max_rel_diff', float('nan')):.1e}; peak RSS {res['peak_rss_mb']:,.0f} MB.",
    ]
  )
  res.write(md + "\n")
  print(md, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
