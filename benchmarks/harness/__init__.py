"""The benchmarks' harness: what every script in benchmarks/ shares, so that a benchmark is one file
saying what it measures.

    python benchmarks/<name>.py [--quick] [--out_dir DIR] [--rounds N --windows N --window_s S ...]

A benchmark (see benchmarks/throughput.py for a whole one):

1. declares its options as a dataclass (`options`: `Options` / `Timed` hold the shared ones, each
   field a flag; `parse` turns argv into it, a bad value one line, exit 2);
2. runs each variant in a fresh worker process (`workers`: `run_worker(script, spec)` starts
   `python <script> --worker JSON` with this environment and PYTHONPATH, a timeout, and returns
   the worker's JSON with the process tree's peak RSS; the script's `__main__` calls
   `worker_main(handlers)` first);
3. times steps inside the worker (`timing`: the first step apart, a warm-up, N windows of S
   seconds, the median and spread; `alternate` for a variant and its reference window by window,
   `interleave` for the order of worker runs);
4. fills one `Record` (`record`: command, time, machine, code, load before, options, then its
   measurements and the checks judged) and writes it: `rec.write(markdown)` adds the load after
   and writes <out_dir>/<name>.json and .md (`env` holds the machine and load readings).

The parent process never imports JAX (it would hold an accelerator or fix the CPU device count);
workers do.
"""

# ruff: noqa: F401, I001 (the harness's names, re-exported a few to a line)
from .env import REPO, command_line, cpu_bf16_flags, cpu_model, finish, git, gpus, load_average
from .env import machine, mem_available_gb, now, provenance, usable_cores, utc_now, worktree
from .options import COMMON_HELP, Options, Timed, opt, parse, parser, subset, timing_spec
from .record import RESULTS, Record, apply_overrides, check, checks_markdown, code_line
from .record import error_line, fmt_rate, format_cell, markdown_table, override_flags
from .record import write_json, write_results
from .timing import alternate, interleave, pool, rate, ratios, spec_windows, spread
from .timing import timed_windows
from .workers import BENCH, MALLOC, RESULT_TAG, TORCH_ENV, Finished, malloc_env, peak_rss_mb
from .workers import rss_mb, run_command, run_worker, tree_cpu_s, tree_rss, worker_env, worker_main
from .workers import tree_env, tree_pythonpath

ROOT = REPO
