"""benchmarks/compare_torch.py's report: the Markdown (speed tables and ratios, quality table,
how to read them) and the figure (rates per table size, AUCs per seed) from a results dict."""

from __future__ import annotations

from pathlib import Path

import common
import compare_torch_env as env
import reporting


def markdown(res: dict) -> str:
  a = res["args"]
  L = [
    f"# esmjax vs PyTorch ({res['when']})",
    "",
    f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} usable cores, "
    f"backend {res['probe'].get('backend')}; jax {res['probe'].get('jax')}, torch "
    f"{res['probe'].get('torch')} "
    f"({a['torch_threads']} threads). Load average before/after: {res['load_before']} / "
    f"{res['load_after']} "
    "(the machine is shared: other jobs ran during the measurement).",
    "",
    reporting.code_line(res) + f"Command: `{res['command']}`",
    "",
  ]
  for k, when in (res.get("kept_from_previous") or {}).items():
    L += [
      f"The {'speed' if k == 'throughput' else k} section is kept from the run of {when} "
      f"(this run skipped it; its load averages are in that run's JSON).",
      "",
    ]
  tp, rt = res.get("throughput"), res.get("ratios", {})
  if tp:
    L += [
      "## Speed: ESMM, 23 fields × 18, towers 200-80-1, batch "
      f"{a['batch']}, Zipf({common.ZIPF_A}) ids, pre-generated batches",
      "",
    ]
    for rows, variants in tp.items():
      L += [f"### {float(rows):.0e} table rows", ""]
      rws = []
      for name, s in sorted(
        variants.items(),
        key=lambda kv: -kv[1]["ex_per_s"]["median"] if kv[1]["ex_per_s"]["n"] else 0,
      ):
        e = s["ex_per_s"]
        c = s.get("ex_per_cpu_s") or {"median": float("nan")}
        rws.append(
          [
            name,
            e["median"],
            f"{e['min'] / 1e3:,.1f}–{e['max'] / 1e3:,.1f} k",
            f"±{100 * e['rel_half_range']:.0f} %" if e["n"] else "–",
            e["n"],
            c["median"],
            s["first_step_s"],
            s["peak_rss_mb"],
            s["peak_rss_mb"] - s["rss_after_import_mb"],
            "; ".join(x[:80] for x in s["errors"]) or "",
          ]
        )
      L += [
        reporting.markdown_table(
          [
            "variant",
            "ex/s (median)",
            "window range",
            "noise",
            "windows",
            "ex per CPU-s",
            "first step s",
            "peak RSS MB",
            "over import MB",
            "errors",
          ],
          rws,
        ),
        "",
      ]
      if rows in rt:
        r = rt[rows]
        L.append(
          f"**JAX default (row-wise Adagrad) / best PyTorch ({r['best_torch']}): "
          f"{r['default_vs_best_torch']:.2f}×** (the two variants' window half-ranges add up to "
          f"±{100 * r['ratio_noise']:.0f} %); "
          f"best JAX ({r['best_jax']}) / best PyTorch: {r['best_jax_vs_best_torch']:.2f}×. Same "
          "optimizer: "
          + ", ".join(
            f"{k} {v['ratio']:.2f}× (vs {v['best_torch']})" for k, v in r["matched"].items()
          )
          + "."
          + (
            " Per CPU-second (work per example, whatever share of the cores each got): JAX "
            "default / best "
            f"PyTorch ({r['cpu_time']['best_torch']}) "
            f"{r['cpu_time']['default_vs_best_torch']:.2f}×."
            if r.get("cpu_time")
            else ""
          )
        )
        L.append("")
    if res.get("roofline"):
      L += [res["roofline"]["line"], ""]
  q = res.get("quality")
  if q:
    L += [
      f"## Quality: default synthetic data, batch {a['batch']}, "
      + (f"{a['quality_steps']} steps" if a["quality_steps"] else f"{a['epochs']} epoch(s)")
      + f", seeds {a['seeds']}, same batches for both, evaluated by "
      "esmjax.evaluation.scoring.compute_metrics",
      "",
    ]
    for model, s in q["summary"].items():
      if "diff" not in s:
        continue
      rws = []
      for k, d in s["diff"].items():
        rws.append(
          [
            k,
            f"{d['jax_mean']:.4f}",
            f"{d['torch_mean']:.4f}",
            f"{d['diff']:+.4f}",
            f"{d['seed_range']:.4f}",
            "yes" if d["within_noise"] else "no",
          ]
        )
      L += [
        f"### {model}",
        "",
        reporting.markdown_table(
          [
            "metric",
            "JAX (seed mean)",
            "PyTorch (seed mean)",
            "JAX − PyTorch",
            "seed-to-seed range (max of the two)",
            "within noise",
          ],
          rws,
        ),
        "",
      ]
      L.append(
        f"Training examples/s incl. the input pipeline (median of {s['jax']['ex_per_s']['n']}/"
        f"{s['torch']['ex_per_s']['n']} windows): JAX "
        f"{reporting.fmt_rate(s['jax']['ex_per_s']['median'])}, "
        "PyTorch (eager-sparse-rowwise_adagrad) "
        f"{reporting.fmt_rate(s['torch']['ex_per_s']['median'])}; "
        f"peak RSS JAX {s['jax']['peak_rss_mb']:,.0f} MB, PyTorch {s['torch']['peak_rss_mb']:,.0f} "
        "MB."
      )
      L.append("")
  L += [
    "## How to read this",
    "",
    "- Rates are medians of timed windows (after the first step and a warm-up), pooled over rounds "
    "in which "
    "JAX and PyTorch variants alternate; the window range and ± half-range show the noise of this "
    "shared "
    "machine. Ratios are of medians measured in the same invocation.",
    "- 'ex per CPU-s' divides by the CPU time of the worker process (all threads) instead of wall "
    "time: "
    "on this oversubscribed machine it says what a step costs in work, independent of the share of "
    "the "
    "cores the scheduler gave each process.",
    "- Peak RSS is per worker process and includes the framework runtime; 'over import' subtracts "
    "the "
    "RSS right after importing it (the model, optimizer state, batches and compiled code).",
    "- PyTorch runs with torch.set_num_threads(--torch_threads) and OMP_WAIT_POLICY=PASSIVE: on "
    "this "
    "oversubscribed machine OpenMP spin-waiting made 2 threads up to 5× slower than 1 (measured); "
    "passive "
    "waiting was PyTorch's fastest setting. JAX runs with its defaults.",
    f"- Allocator: {env.MALLOC[res['args'].get('malloc', 'os')]}.",
    "- Quality runs feed both frameworks the same batches in the same order; a difference of seed "
    "means "
    "within the seed-to-seed range is within run-to-run noise.",
    f"- Regenerate: `{res['command']}`.",
  ]
  return "\n".join(L) + "\n"


def plot(res: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tp = res.get("throughput") or {}
  q = (res.get("quality") or {}).get("summary", {})
  n = len(tp) + (1 if q else 0)
  if not n:
    return
  ratios = [1.0] * len(tp) + ([1.8] if q else [])
  fig, axes = plt.subplots(
    1, n, figsize=(4.2 * sum(ratios), 3.8), dpi=80, gridspec_kw={"width_ratios": ratios}
  )
  axes = [axes] if n == 1 else list(axes)
  for ax, (rows, variants) in zip(axes, tp.items(), strict=False):  # + the quality panel
    items = sorted(
      ((k, s) for k, s in variants.items() if s["ex_per_s"]["n"]),
      key=lambda kv: -kv[1]["ex_per_s"]["median"],
    )
    names = [k.replace("torch-", "pt-").replace("rowwise_adagrad", "rw_adagrad") for k, _ in items]
    med = [s["ex_per_s"]["median"] / 1e3 for _, s in items]
    lo = [m - s["ex_per_s"]["min"] / 1e3 for m, (_, s) in zip(med, items, strict=True)]
    hi = [s["ex_per_s"]["max"] / 1e3 - m for m, (_, s) in zip(med, items, strict=True)]
    ax.barh(
      names,
      med,
      xerr=[lo, hi],
      color=["tab:blue" if k.startswith("jax") else "tab:orange" for k, _ in items],
    )
    ax.invert_yaxis()
    ax.set_xlabel("k examples/s (median, window range)")
    ax.set_title(f"ESMM train step, {float(rows):.0e} rows", fontsize=9)
    ax.tick_params(labelsize=7)
  if q:
    ax = axes[-1]
    labels, xs = [], 0
    for model, s in q.items():
      for k in s.get("diff", {}):
        if not (k.endswith("/auc") or k.endswith("entire_space_auc")):
          continue
        for j, fw in enumerate(("jax", "torch")):
          sp = s[fw][k]
          ax.errorbar(
            xs + 0.15 * (j * 2 - 1),
            sp["median"],
            yerr=[[sp["median"] - sp["min"]], [sp["max"] - sp["median"]]],
            fmt="o",
            color="tab:blue" if fw == "jax" else "tab:orange",
            label=fw if not labels else None,
          )
        labels.append(
          f"{model} {k.replace('/entire_space_auc', ' entire-space').replace('/auc', '')}"
        )
        xs += 1
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=35, ha="right")
    ax.set_ylabel("AUC (seeds: median, range)")
    ax.set_title("Quality, same data and metric code", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
