"""The on-disk dataset format: blocked shards and their manifest (`dataset`, `shards`), blocks
(`blocks`), id mapping with PAD / OOV (`ids`) and atomic JSON files (`files`).

May import: `esmjax.common`; nothing else of `esmjax.data`.
"""
