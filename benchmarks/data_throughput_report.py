"""benchmarks/data_throughput.py's Markdown report: the converter table and full-dump estimate, the
pipeline table with its verdict against the rows/s target, and the checksum table."""

from __future__ import annotations


def markdown(r: dict) -> str:
  c = r["converter"]
  lines = [
    "# Data throughput (benchmarks/data_throughput.py)",
    "",
    f"Machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}; {r['time']}; 1-min "
    "load average "
    f"{r['load_average_1min']['start']} at the start, {r['load_average_1min']['end']} at the end "
    "(other jobs shared the CPUs: numbers are lower bounds).",
    f"Input: generated raw Ali-CCP format, skeleton {r['generated']['skeleton_mb']} MB "
    f"({r['generated']['rows']:,} rows) + common features {r['generated']['common_mb']} MB.",
    "",
    "## Converter (`python -m esmjax.data.aliccp`)",
    "",
    "| skeleton | rows | wall s | MB/s (skeleton+common) | rows/s | CPU s | MB per CPU-s | rows "
    "per CPU-s "
    "| peak RSS, process tree | peak RSS, largest process |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name in ("half", "full"):
    x = c[name]
    lines.append(
      f"| {x['skeleton_bytes'] / 1e6:.0f} MB | {x['rows']:,} | {x['wall_s']} | {x['mb_per_s']} | "
      f"{x['rows_per_s']:,} | {x['cpu_s']} | {x['mb_per_cpu_s']} | {x['rows_per_cpu_s']:,} | "
      f"{x['peak_rss_tree_mb']} MB | {x['peak_rss_largest_process_mb']} MB |"
    )
  e = r["full_dump_estimate"]
  lines += [
    "",
    f"Peak RSS full / half skeleton: **{r['peak_rss_ratio_full_over_half']}** (1.0 = independent "
    "of skeleton length).",
    f"Estimate for the full 38 GB dump on one such machine: **{e['hours_at_measured_mb_per_s']} "
    "h** at the measured "
    f"MB/s ({e['hours_at_measured_rows_per_s_train_rows']} h for the 42.3 M train rows at the "
    "measured rows/s); "
    f"**{e['hours_idle_machine']} h** on idle cores (measured CPU time per MB, spread over the "
    "workers).",
    "",
  ]
  lines += pipeline_markdown(r["pipeline"], r["targets"])
  lines += checksum_markdown(r["checksums"])
  return "\n".join(lines)


def checksum_markdown(sums: list[dict]) -> list[str]:
  lines = [
    f"## Checksums (on {sums[0]['block_bytes']:,}-byte block records)",
    "",
    "| function | GB/s, one block again and again (cache) | GB/s, every block once (memory) |",
    "|---|---|---|",
  ]
  by = {(x["function"], x["data"]): x["gb_per_s"] for x in sums}
  for name in dict.fromkeys(x["function"] for x in sums):
    lines.append(f"| {name} | {by[(name, 'cache')]} | {by[(name, 'memory')]} |")
  return lines + [
    "",
    "Shards store `shards.block_checksum` per block (three 64-bit sums of the record's "
    "words, plain and position-weighted, in NumPy); the pipeline checks a window's blocks on its "
    "verify thread while it reads the one before.",
    "",
  ]


def pipeline_markdown(pipe: list[dict], targets: dict) -> list[str]:
  """The pipeline table, its notes and the verdict against the rows/s target."""
  lines = [
    f"## Pipeline (batch {pipe[0]['batch']}, block and row shuffle on)",
    "",
    f"Round-robin: {pipe[0]['runs']} runs of {pipe[0]['seconds_per_run']} s per variant, one "
    "variant after another; "
    "medians (the runs' rows/s and 1-min load averages are in the JSON).",
    "",
    "| pipeline | layout | checksums | gather threads | grain worker processes | rows/s (median) | "
    "GB/s "
    "| rows per CPU-s | bytes/row | block rows | window rows | load avg during runs |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for p in pipe:
    mp = p["pipeline"] != "train_iter_dataset"
    lines.append(
      f"| {p['pipeline']} | {p['layout']} | {'verified' if p['verify'] else 'off'} | "
      f"{'-' if mp else p['threads']} | {p['workers']} | "
      f"{p['rows_per_s']:,} | {p['gb_per_s']} | {p['rows_per_cpu_s']:,} | {p['row_bytes']} | "
      f"{p['block_rows']} | {p['window_rows']} | {min(p['load_1min'])}-{max(p['load_1min'])} |"
    )
  lines += [
    "",
    "`train_iter_dataset` is `esmjax.data.pipeline` as the trainer builds it (in-process, one "
    "prefetch thread;",
    "gather threads 1 is the trainer's default, `PipelineConfig.threads`). It cannot run under "
    "grain's",
    "`mp_prefetch` (it is an IterDataset with (window, offset) state, not a MapDataset), so worker "
    "processes are",
    "measured on an equivalent pipeline: `windows+mp_prefetch` maps a window of blocks to its "
    "concatenated,",
    "row-shuffled rows as a grain element and cuts batches in the main process (0 workers: the "
    "same in-process).",
    "Rows per CPU-second = rows / CPU time of the process (all threads) and its workers: the rate "
    "one idle core",
    "would give. With other jobs on the CPUs, rows/s is a lower bound and extra threads or workers "
    "only add CPU.",
  ]
  trainer = next(
    (
      p
      for p in pipe
      if p["pipeline"] == "train_iter_dataset"
      and p["layout"] == "default"
      and p["threads"] == 1
      and p["verify"]
    ),
    None,
  )
  unverified = next(
    (
      p
      for p in pipe
      if p["pipeline"] == "train_iter_dataset"
      and p["layout"] == "default"
      and p["threads"] == 1
      and not p["verify"]
    ),
    None,
  )
  best = max(
    (p for p in pipe if p["layout"] == "default" and p["verify"]),
    key=lambda p: p["rows_per_s"],
    default=None,
  )
  lean = next(
    (p for p in pipe if p["layout"] != "default" and p["threads"] == 1 and p["verify"]), None
  )
  t = targets["pipeline_rows_per_s"]
  if trainer:
    met = "**met**" if trainer["rows_per_s"] >= t else "**not met**"
    lines += [
      "",
      f"Verdict: target ≥ {t:,} rows/s — {met}: the trainer's pipeline reads "
      f"{trainer['rows_per_s']:,} "
      f"rows/s (median; default layout, {trainer['row_bytes']} B/row, load average "
      f"{min(trainer['load_1min'])}-{max(trainer['load_1min'])}), {trainer['rows_per_cpu_s']:,} "
      "rows per "
      f"CPU-second, every block verified against its checksum.",
    ]
  if trainer and unverified:
    lines += [
      "Checksums off (for comparison only; the trainer always verifies): "
      f"{unverified['rows_per_s']:,} "
      f"rows/s, {unverified['rows_per_cpu_s']:,} rows per CPU-second; verified / off = "
      f"{trainer['rows_per_s'] / max(unverified['rows_per_s'], 1):.2f} (rows/s), "
      f"{trainer['rows_per_cpu_s'] / max(unverified['rows_per_cpu_s'], 1):.2f} (rows per "
      "CPU-second)."
    ]
  if best and best is not trainer:
    lines += [
      f"Best default-layout variant: {best['pipeline']} ({best['threads']} gather threads, "
      f"{best['workers']} workers), {best['rows_per_s']:,} rows/s, {best['rows_per_cpu_s']:,} rows "
      "per CPU-second."
    ]
  if lean:
    lines += [
      f"Lean layout (one value per multi-valued field, {lean['row_bytes']} B/row): "
      f"{lean['rows_per_s']:,} rows/s "
      f"(median), {lean['rows_per_cpu_s']:,} rows per CPU-second."
    ]
  return lines + [""]
