"""A trained model put to use: scoring a dataset with a workdir's latest checkpoint (`predict`),
the StableHLO serving artifact and its signature (`export`); both check a model's input columns
and map stray ids to OOV by `esmjax.common.inputs`.

May import: everything below it (common, config, the domain packages, core, checkpoints,
evaluation); never training: a workdir is read through `esmjax.core` and
`esmjax.checkpoints`, not through the loop that wrote it.
"""
