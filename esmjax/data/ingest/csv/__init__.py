"""CSV / Parquet ingestion (`python -m esmjax.data.csv_ingest`): the two passes (`ingest`), the
config and its validation (`config`), reading with pyarrow (`read`) and mapping columns into
blocks (`columns`).

May import: `esmjax.common`, `esmjax.exits`, `esmjax.data.format` and `esmjax.data.ingest`.
"""
