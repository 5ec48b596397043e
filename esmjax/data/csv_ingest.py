"""python -m esmjax.data.csv_ingest: CSV / Parquet ingestion's command (`esmjax.data.ingest.csv`,
whose `ingest` module documents the flags)."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("esmjax.data.ingest.csv.ingest", run_name="__main__", alter_sys=True)
