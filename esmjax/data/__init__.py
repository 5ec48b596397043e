"""Datasets: everything between raw logs and the batches a model reads.

format/     the on-disk format: blocked shards, the manifest, blocks, id mapping, file helpers
pipeline/   the input pipeline: block order and grain batches for training and evaluation
ingest/     converters into the format: the rules both share (`shared`, `leakage`), the raw
            Ali-CCP converter (`ingest/aliccp/`) and CSV / Parquet (`ingest/csv/`)
synthetic/  synthetic worlds with known ground truth (the default dataset), generated and cached
aliccp.py, csv_ingest.py   the converters' commands (`python -m esmjax.data.aliccp`, `...
csv_ingest`)

May import: `esmjax.common` and `esmjax.exits` (the converters' commands end through it); never
`embedding` or `models` (the domain packages share only the schema) nor anything above.
"""
