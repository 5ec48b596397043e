"""Everything about metrics: exact global metrics on host arrays (`metrics`) and on device arrays
(`device_metrics`, sorted on the accelerator), scoring a whole
dataset with a step function (`scoring`), evaluation during and at the end of training
(`evaluator`), where metrics are written and read back (`metrics_io`: JSON lines, TensorBoard) and
the training curves as a PNG (`plot`).

May import: `esmjax.common`, `esmjax.config`, the domain packages, `esmjax.core` and
`esmjax.checkpoints`; never training or serving.
"""
