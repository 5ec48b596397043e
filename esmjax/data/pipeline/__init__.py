"""The input pipeline: which blocks a process reads in which order (`order`) and the grain
datasets of training and evaluation batches (`batches`).

May import: `esmjax.common` and `esmjax.data.format`.
"""
