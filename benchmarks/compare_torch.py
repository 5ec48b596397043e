r"""esmjax against the same model in PyTorch: speed and quality, side by side, in one run.

    python benchmarks/compare_torch.py            # full: over an hour on the shared 2-core CPU
    python benchmarks/compare_torch.py --quick    # a few minutes: 3 variants, short windows, 1 seed

Needs the bench extra (`pip install -e '.[bench]'`: torch==2.13.0, CPU wheel here).

Speed (examples/s, peak memory): ESMM at the paper sizes (23 single-valued fields × dim 18, towers
200-80-1, batch 4096) on pre-generated Zipf batches (benchmarks/common.py), identical for both
frameworks, at 1e5 and 1e7 table rows. Variants:
  jax-<opt>        esmjax's step (trainer.Run: jitted, donated) with the row-wise optimizer <opt>
  torch-<variant>  benchmarks/torch_reference.py: eager or torch.compile; sparse (nn.Embedding /
                   EmbeddingBag sparse=True) or dense gradients; rowwise_adagrad (custom, = esmjax's
                   default), adagrad (torch.optim.Adagrad), lazy_adam (torch.optim.SparseAdam) or,
                   with dense gradients, adam (torch.optim.Adam on the tables too: what a PyTorch
                   user writes first for a small table). compile-dense-* compiles lookups, towers
                   and loss in one graph; compile-dense-rowwise_adagrad / -adagrad take esmjax's
                   steps exactly, compile-dense-adam is dense Adam (tests/test_torch_reference.py).
The best PyTorch variant at each table size is the comparator.
Every (variant, table size) runs in a fresh subprocess: the first step (compile) is timed apart,
then a warm-up, then timed windows; the reported rate is the median over all windows of all
rounds. Rounds and variants are interleaved (jax, torch, jax, torch, ...) so the load of this shared
machine falls on both alike. Peak memory is the worker's peak RSS (it includes the framework's own
~0.3–0.5 GB; the model's share is listed apart); on an accelerator, device peak bytes too.

Quality (AUCs): ESMM and ESM2 on the default synthetic data
(esmjax.config.defaults.default_config()),
batch 4096, the same grain pipeline and batch order for both (seeded by --seeds), --epochs each.
esmjax trains through its own loop (trainer.train_and_evaluate); PyTorch reads the same batches
through the trainer's iterator; both are scored by esmjax.evaluation (predict_dataset,
compute_metrics) on the whole eval split. PyTorch uses the optimizer that equals esmjax's default
(row-wise Adagrad, sparse, eager). Different seeds give
the run-to-run noise against which the JAX–PyTorch difference is judged.

Writes benchmarks/results/compare_torch.{json,md,png} (or --out_dir).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import compare_torch_env as env
import compare_torch_quality as quality
import compare_torch_report as report
import compare_torch_speed as speed
import reporting


def _keep_previous(res: dict, path: Path, args) -> None:
  """A --skip_speed / --skip_quality run keeps the other section of the previous results file,
  marked with when it was measured (so one can be refreshed without redoing the other)."""
  if not path.exists() or args.quick:
    return
  import json

  prev = json.loads(path.read_text())
  for key, skipped in (("quality", args.skip_quality), ("throughput", args.skip_speed)):
    if skipped and key in prev:
      res[key] = prev[key]
      res.setdefault("kept_from_previous", {})[key] = prev.get("section_when", {}).get(
        key, prev.get("when")
      )
      if key == "throughput":
        res["ratios"], res["roofline"] = prev.get("ratios"), prev.get("roofline")
  res["section_when"] = {
    k: res.get("kept_from_previous", {}).get(k, res["when"])
    for k in ("quality", "throughput")
    if k in res
  }


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument(
    "--quick",
    action="store_true",
    help="a few minutes: 1 round, 1e5/1e6 rows, JAX row-wise Adagrad, PyTorch "
    "eager-sparse-rowwise_adagrad and compile-dense-adam, ESMM 20 steps, 1 seed",
  )
  ap.add_argument("--out_dir", default=str(common.RESULTS))
  ap.add_argument("--rows", default="1e5,1e7", help="table sizes of the speed comparison")
  ap.add_argument("--batch", type=int, default=4096)
  ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every speed variant")
  ap.add_argument("--windows", type=int, default=3)
  ap.add_argument("--window_s", type=float, default=3.0)
  ap.add_argument("--warmup_s", type=float, default=2.0)
  ap.add_argument("--torch_threads", type=int, default=reporting.usable_cores())
  ap.add_argument(
    "--torch_variants", default="", help="comma-separated torch variants (default: all)"
  )
  ap.add_argument(
    "--jax_variants",
    default="",
    help="comma-separated row-wise optimizers for JAX, '-bf16' for bf16 towers (default: all)",
  )
  ap.add_argument("--models", default="esmm,esm2")
  ap.add_argument("--seeds", default="0,1")
  ap.add_argument("--epochs", type=float, default=1.0)
  ap.add_argument(
    "--quality_steps", type=int, default=0, help="train steps instead of --epochs (0: epochs)"
  )
  ap.add_argument("--max_eval_rows", type=int, default=-1)
  ap.add_argument("--skip_speed", action="store_true")
  ap.add_argument("--skip_quality", action="store_true")
  ap.add_argument("--skip_roofline", action="store_true")
  ap.add_argument("--worker_timeout", type=float, default=900)
  ap.add_argument(
    "--malloc",
    default="huge",
    choices=sorted(env.MALLOC),
    help="allocator for every worker, both "
    "frameworks alike: huge = as `python -m esmjax.main` starts; os = the OS default",
  )
  ap.add_argument(
    "--render_only",
    action="store_true",
    help="rewrite the .md and .png from the .json in --out_dir",
  )
  args = ap.parse_args(argv)
  if args.render_only:
    import json

    res = json.loads((Path(args.out_dir) / "compare_torch.json").read_text())
    reporting.write_results(
      args.out_dir,
      "compare_torch",
      res,
      report.markdown(res),
      figures={"": lambda p: report.plot(res, p)},
    )
    return
  if args.quick:
    args.rounds, args.windows, args.window_s, args.warmup_s = 1, 2, 1.0, 0.5
    args.rows = "1e5,1e6" if args.rows == "1e5,1e7" else args.rows
    args.models, args.seeds, args.max_eval_rows = "esmm", "0", 16_384
    args.quality_steps = args.quality_steps or 20
  args.rows = [int(float(x)) for x in args.rows.split(",") if x]
  args.models = [m for m in args.models.split(",") if m]
  args.seeds = [int(s) for s in args.seeds.split(",") if s]
  out_dir = Path(args.out_dir)
  log = lambda s: print(s, flush=True)
  t0 = time.time()
  probe = common.run_worker(env.SCRIPT, {"kind": "probe"}, env=common.worker_env(devices=1))
  if not probe.get("torch"):
    sys.exit("compare_torch needs torch: pip install -e '.[bench]' (torch==2.13.0)")
  res = {**reporting.provenance(), "probe": probe, "args": vars(args)}
  if not args.skip_speed:
    log("speed (examples/s, median of windows):")
    res["throughput"] = speed.throughput_section(args, log)
    res["ratios"] = speed.ratios(res["throughput"])
    for rows, r in res["ratios"].items():
      log(
        f"  {float(rows):.0e} rows: JAX default / best PyTorch ({r['best_torch']}) = "
        f"{r['default_vs_best_torch']:.2f}x"
        + (
          f"; per CPU-second {r['cpu_time']['default_vs_best_torch']:.2f}x"
          if r.get("cpu_time")
          else ""
        )
      )
    if not args.skip_roofline:
      import roofline

      peak = roofline.measure_peak(quick=args.quick, with_torch=not args.quick)
      first = res["ratios"].get(str(args.rows[0]))
      if first:
        line = roofline.fraction_line(
          first["jax_default_ex_per_s"],
          common.model_flops("esmm", common.PAPER_FIELDS),
          peak["peak_gflops"],
        )
        res["roofline"] = {
          **peak,
          "line": f"{line} (at {args.rows[0]:.0e} rows; peak measured after the speed runs)",
        }
        log("  " + res["roofline"]["line"])
  if not args.skip_quality:
    log("quality (AUCs on the synthetic eval split):")
    res["quality"] = quality.quality_section(args, log)
  _keep_previous(res, out_dir / "compare_torch.json", args)
  reporting.finish(res, t0)
  md = report.markdown(res)
  reporting.write_results(
    out_dir, "compare_torch", res, md, figures={"": lambda p: report.plot(res, p)}
  )
  log(md)
  log(f"wrote {out_dir}/compare_torch.{{json,md,png}} in {res['elapsed_s']:.0f}s")


if __name__ == "__main__":
  if not common.worker_main(
    {
      "probe": lambda s: common.jax_probe(),
      "jax": common.jax_throughput,
      "torch": speed.torch_throughput,
      "quality": quality.quality,
    }
  ):
    main()
