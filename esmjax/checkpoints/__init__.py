"""Checkpoints beside the runtime core: saving and restoring a train state with orbax
(`checkpoint`, verified against the digests of `esmjax.common.digest`), what a saved config means
for a resume and the errors raised (`settings`), the row layout of table leaves across device
counts (`rows`), and orbax's failures said in one line (`orbax_errors`). Training, evaluation and
serving all restore
through here.

May import: `esmjax.common`, `esmjax.config`, the domain packages and `esmjax.core`.
"""
