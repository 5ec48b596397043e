"""Checkpoints beside the runtime core: saving and restoring a train state with orbax
(`checkpoint`), the per-leaf digests that prove a restored state is the saved one (`digest`), and
orbax's failures said in one line (`orbax_errors`). Training, evaluation and serving all restore
through here.

May import: `esmjax.common`, `esmjax.config`, the domain packages and `esmjax.core`.
"""
