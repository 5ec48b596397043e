"""The runtime core every run mode stands on: the train state and the components it is built from
(`state`), the pure step functions (`steps`), the mesh and batch movement (`sharding`), JAX's
distributed runtime (`distributed`), host memory (`host_memory`), the `Run` object (`run`), the
NaN guard (`guard`), the workdir a run owns and the files it leaves (`workdir`), what a run
reads (`feed`), learning rates scaled with the batch (`lr_scaling`), and output files written
whole or not at all (`outputs`).

May import: `esmjax.common`, `esmjax.config` and the domain packages. Training, evaluation and
serving sit on top of it; nothing here imports them.
"""
