"""The benchmarks' harness (benchmarks/harness/) under the name experiments/ import it by:
provenance, Markdown tables, claim checks, results files, config overrides, tree_rss.

    from benchmarks import reporting      # experiments (python -m experiments.x)
"""

# ruff: noqa: F401, F403
try:  # as benchmarks.reporting
  from .harness import *
except ImportError:  # as `reporting`, benchmarks/ on sys.path
  from harness import *
