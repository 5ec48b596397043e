r"""Accelerator sweep: esmjax's train step over batch size, table rows, device count, dtype and
model.

    python benchmarks/sweep.py                 # full: ~12 min on the shared 2-core CPU (load ~20)
    python benchmarks/sweep.py --quick         # ~2 min (45 s of points, then the roofline)
    python benchmarks/sweep.py --budget_s=90 --window_s=0.5 --warmup_s=0.5 --windows=2  # a GPU

Detects the backend in a worker process (the parent never imports JAX). On CPU the device axis uses
1/2/4/8 fake devices (XLA_FLAGS=--xla_force_host_platform_device_count=N per worker); on a GPU or
TPU it uses 1, 2, 4, ... up to every device present. The points of one (device count, dtype) run
in one worker process, each compiled once (--isolate: a fresh process per point, so that peak RSS
and device peak bytes are its own), on pre-generated Zipf batches at the ESMM paper sizes
(benchmarks/common.py), and report the median examples/s of timed windows after a warm-up. A group
costs one start-up and JAX import, a point only its compilation and its windows (the accelerator
check gives the whole grid 90 s).

The grid is one factor at a time around a base point (ESMM, f32, batch 4096, 1e6 rows, 1 device),
plus both dtypes (model.dtype and embedding.dtype = bfloat16) for both models:
  batch    512 … 65536 in f32, 1024 … 65536 in bf16   (examples/s vs batch)
  rows     1e5 … 1e8                    (examples/s vs table rows; points that would not fit in
                                         memory are skipped and listed, never silently dropped)
  devices  1/2/4/8 (CPU) or all present (weak scaling: the per-device batch stays at the base batch;
                                         scaling efficiency = ex/s(N) / (N · ex/s(1)))
  dtype    float32 / bfloat16 (tables and towers)
  model    esmm / esm2
Points are run in priority order and --budget_s stops starting new ones (the rest are listed as
skipped), so a sweep fits a time box. Writes sweep.{json,md,png} into --out_dir.

Fake CPU devices share this machine's cores: on CPU the device axis measures what sharding costs,
not what more chips buy (ideal there is a flat total rate; efficiency ≈ 1/N).
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import harness

ME = Path(__file__).resolve()
ACCEL = ("gpu", "tpu", "cuda", "rocm")


@dataclasses.dataclass
class Opts(harness.Options):
  quick: bool = harness.opt(False, "~2 minutes on CPU: 9 points, short windows")
  isolate: bool = harness.opt(
    False,
    "a fresh process per point (its own peak RSS and device peak) instead of one per "
    "(devices, dtype) group; each point then pays start-up and the JAX import",
  )
  budget_s: float = harness.opt(
    0.0, "stop starting points after this many seconds (0: 100 for --quick, unlimited otherwise)"
  )
  base_rows: float = harness.opt(0.0, "table rows of the base point (0: 1e5 quick, 1e6 full)")
  base_batch: int = 4096
  windows: int = 3
  window_s: float = 2.0
  warmup_s: float = 1.5
  mem_fraction: float = harness.opt(
    0.6, "skip points needing more than this share of the available host memory (CPU backend)"
  )
  worker_timeout: float = 600
  skip_roofline: bool = False


F32_BATCHES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
BF16_BATCHES = (1024, 4096, 16384, 32768, 65536)  # where the step may be compute bound


def grid(
  quick: bool, accel: bool, device_count: int, base_rows: int, base_batch: int
) -> list[dict]:
  """Sweep points in priority order (the base point first)."""
  if quick:
    batches, rows = [1024, base_batch, 16384], [int(1e5), int(1e6)]  # grouped per device count
    bf16_batches = [base_batch]
    devices = [1, 2, 8] if not accel else sorted({1, device_count})
  else:
    batches, bf16_batches = list(F32_BATCHES), list(BF16_BATCHES)
    rows = [int(1e5), int(1e6), int(1e7), int(1e8)]
    devices = (
      [1, 2, 4, 8]
      if not accel
      else sorted({d for d in (1, 2, 4, 8, 16, 32, 64) if d <= device_count} | {device_count})
    )
  if accel:  # an accelerator's question is the large batch: those first, so a time box covers them
    batches, bf16_batches = sorted(batches, reverse=True), sorted(bf16_batches, reverse=True)
  base = dict(model="esmm", dtype="float32", batch=base_batch, rows=base_rows, devices=1)
  bf16 = dict(base, dtype="bfloat16")
  pts = [dict(base, axis="base")]
  pts += [dict(base, devices=d, batch=base_batch * d, axis="devices") for d in devices if d != 1]
  pts += [dict(base, batch=b, axis="batch") for b in batches if b != base_batch]
  pts += [dict(base, rows=r, axis="rows") for r in rows if r != base_rows]
  pts += [dict(bf16, axis="dtype")]
  pts += [dict(bf16, batch=b, axis="batch") for b in bf16_batches if b != base_batch]
  pts += [dict(base, model="esm2", axis="model"), dict(bf16, model="esm2", axis="model")]
  return pts


def groups_of(points: list[dict], todo: list[int]) -> dict[tuple[int, str], list[int]]:
  """The points `todo` (indices) by (devices, dtype): one worker process each, in the order of
  their first point, each group's points in priority order."""
  out: dict[tuple[int, str], list[int]] = {}
  for i in todo:
    out.setdefault((points[i]["devices"], points[i]["dtype"]), []).append(i)
  return out


def footprint_gb(p: dict) -> float:
  """Rough peak bytes of a point: the train state (tables initialised in place, the row-wise slot,
  the scratch row map), the pre-made batches, and ~0.6 GB of runtime."""
  table = p["rows"] * common.state_bytes_per_row(p["dtype"])
  batches = 8 * p["batch"] * (common.PAPER_FIELDS * 4 + 8)
  return (table + batches) / 2**30 + 0.6


def _key(p: dict) -> str:
  return f"{p['model']}/{p['dtype']}/b{p['batch']}/r{p['rows']:.0e}/d{p['devices']}"


def many(spec) -> dict:
  """Worker: several points in one process (--quick: saves a start-up and a JAX import per point).
  Peak RSS is then the process's running peak, so it is flagged cumulative."""
  out = []
  for k, p in enumerate(spec["points"]):
    if k and time.time() > spec["deadline"]:  # the first point of a group always runs
      out.append({"skipped": "time budget spent"})
      continue
    try:
      out.append({**common.jax_throughput(p), "rss_cumulative": True})
      gc.collect()  # the point's state and batches go before the next point allocates its own
    except Exception as e:  # one failing point must not lose the others
      out.append({"error": f"{type(e).__name__}: {str(e)[:500]}"})
  return {"results": out}


def _log_row(row, log):
  key = _key(row)
  if "rate" in row:
    log(
      f"  {key:<36} {row['rate']['median'] / 1e3:9.1f} k ex/s "
      f"±{100 * row['rate']['rel_half_range']:.0f} %  "
      f"first step {row['first_step_s']:.1f}s  peak RSS {row['peak_rss_mb']:.0f} MB"
      + (f"  device peak {row['device_peak_mb']:.0f} MB" if row.get("device_peak_mb") else "")
    )
  else:
    log(
      f"  {key:<36} "
      + (
        "skipped: " + row["skipped"]
        if row.get("skipped")
        else "ERROR " + row.get("error", "")[:300]
      )
    )


def run_points(points, args, probe, log) -> list[dict]:
  """Runs every point: one process per (device count, dtype) group (each point compiled once,
  start-up and the JAX import paid once per group), or a fresh process per point (--isolate)."""
  accel = probe.get("backend") in ACCEL
  mem_gb = harness.mem_available_gb() if not accel else float("inf")
  t0 = time.time()
  rows: list[dict | None] = [None] * len(points)
  todo = []
  for i, p in enumerate(points):
    need = footprint_gb(p)
    if need > args.mem_fraction * mem_gb:
      rows[i] = {
        **p,
        "skipped": f"needs ~{need:.1f} GB; {mem_gb:.1f} GB available × {args.mem_fraction}",
      }
      _log_row(rows[i], log)
    else:
      todo.append(i)
  spec_of = lambda p: {
    "kind": "jax",
    "model": p["model"],
    "dtype": p["dtype"],
    "batch": p["batch"],
    "rows": p["rows"],
    "devices": p["devices"],
    "warmup_s": args.warmup_s,
    "windows": args.windows,
    "window_s": args.window_s,
    "n_batches": 4 if p["batch"] >= 32768 else 8,
  }
  env_of = lambda d: harness.worker_env(devices=None if accel else d)

  def record(i, r):
    row = {**points[i], **{k: v for k, v in r.items() if k != "spec"}}
    if "error" not in r and "skipped" not in r:
      row["rate"] = harness.spread(r["ex_per_s"])
    rows[i] = row
    _log_row(row, log)

  if not args.isolate:
    groups = groups_of(points, todo)
    # The 1-device f32 group (base point first) goes first; each group gets a share of what is
    # left in proportion to its points, and always runs its first point (so scaling has its points).
    n_left = len(todo)
    for (d, _), idx in groups.items():
      share = (args.budget_s - (time.time() - t0)) * len(idx) / max(n_left, 1)
      n_left -= len(idx)
      r = harness.run_worker(
        ME,
        {
          "kind": "many",
          "points": [spec_of(points[i]) for i in idx],
          "deadline": time.time() + share,
        },
        env=env_of(d),
        timeout=args.worker_timeout,
      )
      results = r.get("results") or [{"error": r.get("error", "no result")}] * len(idx)
      for i, one in zip(idx, results, strict=True):
        record(i, one)
  else:
    for i in todo:
      if time.time() - t0 > args.budget_s:
        record(i, {"skipped": f"time budget --budget_s={args.budget_s:.0f} spent"})
        continue
      record(
        i,
        harness.run_worker(
          ME, spec_of(points[i]), env=env_of(points[i]["devices"]), timeout=args.worker_timeout
        ),
      )
  return rows


def _rate(r) -> float:
  return r["rate"]["median"] if "rate" in r else float("nan")


def scaling_table(rows: list[dict]) -> list[dict]:
  pts = sorted(
    [r for r in rows if r.get("axis") in ("base", "devices") and "rate" in r],
    key=lambda r: r["devices"],
  )
  one = next((r for r in pts if r["devices"] == 1), None)
  out = []
  for r in pts:
    speedup = _rate(r) / _rate(one) if one else float("nan")
    out.append(
      {
        "devices": r["devices"],
        "batch": r["batch"],
        "ex_per_s": _rate(r),
        "per_device": _rate(r) / r["devices"],
        "speedup": speedup,
        "efficiency": speedup / r["devices"],
        "noise": r["rate"]["rel_half_range"],
      }
    )
  return out


def markdown(res: dict) -> str:
  pr, rows = res["probe"], res["points"]
  peak = res.get("roofline") or {}
  L = [
    f"# esmjax sweep ({res['when']})",
    "",
    f"Backend **{pr.get('backend')}** ({pr.get('device_count')} × {pr.get('device_kind')}), "
    f"{res['machine']['cpu']}, {res['machine']['cores']} usable cores; jax {pr.get('jax')}, Python "
    f"{pr.get('python')}. Load average before/after: {res['load_before']} / {res['load_after']} "
    "(shared machine: medians of timed windows, ± = half the window range).",
    "",
    harness.code_line(res) + f"Command: `{res['command']}`",
    "",
    "ESMM-paper shapes (23 single-valued fields × dim 18, towers 200-80-1), Zipf ids, "
    "pre-generated batches; "
    + (
      "one fresh process per point"
      if res["args"].get("isolate")
      else "one process per (devices, dtype) group, so peak RSS and the device peak are "
      "cumulative within a group (the group's largest point so far)"
    )
    + ". Engine: "
    + ", ".join(sorted({str(r.get("engine")) for r in rows if r.get("engine")}))
    + ".",
    "",
  ]
  hdr = "axis|model|dtype|batch|rows|devices|ex/s (median)|noise|ex per CPU-s|first step s|"
  hdr += "peak RSS MB|device peak MB|% of roofline|note"
  tab = []
  for r in rows:
    frac = r.get("roofline_fraction", float("nan"))
    noise = f"±{100 * r['rate']['rel_half_range']:.0f} %" if "rate" in r else "–"
    tab.append([
      r["axis"], r["model"], r["dtype"], r["batch"], f"{r['rows']:.0e}", r["devices"], _rate(r),
      noise, harness.spread(r.get("ex_per_cpu_s", []))["median"],
      r.get("first_step_s", float("nan")), r.get("peak_rss_mb", float("nan")),
      r.get("device_peak_mb") or "–", f"{100 * frac:.0f}" if frac == frac else "–",
      r.get("skipped") or (r.get("error", "")[:80]),
    ])  # fmt: skip
  L += ["## All points", "", harness.markdown_table(hdr.split("|"), tab), ""]
  sc = res.get("scaling") or []
  if sc:
    L += [
      "## Device scaling (weak: batch per device fixed)",
      "",
      harness.markdown_table(
        "devices|global batch|ex/s|ex/s per device|speedup vs 1|efficiency|noise".split("|"),
        [
          [
            s["devices"],
            s["batch"],
            s["ex_per_s"],
            s["per_device"],
            f"{s['speedup']:.2f}×",
            f"{100 * s['efficiency']:.0f} %",
            f"±{100 * s['noise']:.0f} %",
          ]
          for s in sc
        ],  # fmt: skip
      ),
      "",
    ]
    if pr.get("backend") == "cpu":
      L += [
        "On CPU the devices are fake: all of them share the same cores, so a speedup ≈ 1 "
        "(efficiency ≈ 1/N) means sharding costs nothing; more than that cannot come from one "
        "machine's cores.",
        "",
      ]
  if peak:
    L += [
      f"Roofline: measured matmul peak {peak['peak_gflops']:,.0f} GFLOP/s f32"
      + (
        f", {peak['peak_bf16_gflops']:,.0f} GFLOP/s bf16"
        if peak.get("peak_bf16_gflops", float("nan")) == peak.get("peak_bf16_gflops")
        else ""
      )
      + f" (backend {peak.get('backend')}); '% of roofline' = ex/s × model FLOP per example (ESMM "
      "1.19 M, ESM2 2.37 M, fwd+bwd) / the peak of the point's dtype × its device count.",
      "",
    ]
  if res.get("skipped"):
    L += ["Skipped points: " + "; ".join(f"{s['key']}: {s['why']}" for s in res["skipped"]), ""]
  L += [f"Regenerate: `{res['command']}`."]
  return "\n".join(L) + "\n"


def plot(res: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in res["points"] if "rate" in r]
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=80)

  def by(axis, dtype):
    pts = [
      r
      for r in rows
      if r["axis"] in (axis, "base", "dtype") and r["model"] == "esmm" and r["dtype"] == dtype
    ]
    return sorted(pts, key=lambda r: r[axis])

  for ax, axis, xlabel in ((axes[0], "batch", "batch size"), (axes[2], "rows", "table rows")):
    for dtype in ("float32", "bfloat16") if axis == "batch" else ("float32",):
      pts = by(axis, dtype)
      if not pts:
        continue
      ax.errorbar(
        [r[axis] for r in pts],
        [_rate(r) / 1e3 for r in pts],
        yerr=[
          [(_rate(r) - r["rate"]["min"]) / 1e3 for r in pts],
          [(r["rate"]["max"] - _rate(r)) / 1e3 for r in pts],
        ],
        marker="o",
        label=dtype,
      )
    ax.set_xscale("log", base=2 if axis == "batch" else 10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("k examples/s")
    ax.set_title(f"ESMM, 1 device, vs {xlabel}", fontsize=9)
    if axis == "batch":
      ax.legend(fontsize=7)
  sc = res.get("scaling") or []
  ax = axes[1]
  if sc:
    ax.plot([s["devices"] for s in sc], [s["ex_per_s"] / 1e3 for s in sc], marker="o", label="ex/s")
    ax.set_xlabel("devices (weak scaling)")
    ax.set_ylabel("k examples/s")
    ax2 = ax.twinx()
    ax2.plot(
      [s["devices"] for s in sc],
      [100 * s["efficiency"] for s in sc],
      marker="s",
      color="tab:red",
      label="efficiency",
    )
    ax2.set_ylabel("scaling efficiency %", color="tab:red")
    ax2.set_ylim(0, 110)
    ax.set_xscale("log", base=2)
    ax.set_title(f"vs devices ({res['probe'].get('backend')})", fontsize=9)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


def main(argv=None):
  args = harness.parse(Opts, argv, __doc__)
  if args.quick:
    args.windows, args.window_s, args.warmup_s = 2, 0.8, 0.5
  args.budget_s = args.budget_s or (45 if args.quick else float("inf"))
  base_rows = int(args.base_rows or (1e5 if args.quick else 1e6))
  log = lambda s: print(s, flush=True)
  probe = harness.run_worker(ME, {"kind": "probe"}, env=harness.worker_env(devices=1))
  if "error" in probe:
    sys.exit(f"could not start JAX: {probe['error']}")
  accel = probe.get("backend") in ACCEL
  log(f"backend {probe['backend']}: {probe['device_count']} × {probe['device_kind']}")
  points = grid(args.quick, accel, probe["device_count"], base_rows, args.base_batch)
  res = harness.Record("sweep", args, probe=probe)
  res["args"] = {k: (v if v != float("inf") else None) for k, v in vars(args).items()}
  res["points"] = run_points(points, args, probe, log)
  if not args.skip_roofline:
    import roofline

    peak = roofline.measure_peak(quick=args.quick, with_torch=False)
    res["roofline"] = peak
    for r in res["points"]:
      if "rate" in r:
        p = peak["peak_bf16_gflops"] if r["dtype"] == "bfloat16" else peak["peak_gflops"]
        ndev = r["devices"] if accel else 1  # fake CPU devices share one machine's peak
        r["roofline_fraction"] = _rate(r) * r["flops_per_example"] / (p * 1e9 * ndev)
  res["scaling"] = scaling_table(res["points"])
  res["skipped"] = [
    {"key": _key(r), "why": r["skipped"]} for r in res["points"] if r.get("skipped")
  ]
  md = markdown(res.finish())
  res.write(md, figures={"": lambda p: plot(res, p)})
  log(md)
  log(f"wrote {args.out_dir}/sweep.{{json,md,png}} in {res['elapsed_s']:.0f}s")


if __name__ == "__main__":
  if not harness.worker_main(
    {"probe": lambda s: common.jax_probe(), "jax": common.jax_throughput, "many": many}
  ):
    main()
