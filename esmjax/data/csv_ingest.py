"""python -m esmjax.data.csv_ingest: CSV / Parquet ingestion's command (`esmjax.data.ingest.csv`,
whose `ingest` module documents the flags). Imported, it offers the ingestion's public names, so a
config file's `from esmjax.data import csv_ingest; csv_ingest.base_config()` reads as before."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("esmjax.data.ingest.csv.ingest", run_name="__main__", alter_sys=True)
else:
  from esmjax.data.ingest.csv.ingest import (  # noqa: F401  (the ingestion's public names)
    BAD_KINDS,
    IngestError,
    base_config,
    ingest,
  )
