"""python -m esmjax.plot WORKDIR [--out FILE.png]: the training curves' command
(`esmjax.evaluation.plot`)."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("esmjax.evaluation.plot", run_name="__main__", alter_sys=True)
