"""Converters from raw logs into the on-disk format. Both share the bad-line report, dense
statistics and console lines (`shared`) and the label-leakage guard (`leakage`).

aliccp/   the raw Ali-CCP release (skeleton + common features), in parallel, resumable
csv/      preprocessed CSV or Parquet with a declared schema (configs/data/*.py)

May import: `esmjax.common`, `esmjax.exits` and `esmjax.data.format`.
"""
