"""python -m esmjax.data.aliccp: the raw Ali-CCP converter's command (`esmjax.data.ingest.aliccp`,
whose `convert` module documents the flags)."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("esmjax.data.ingest.aliccp.convert", run_name="__main__", alter_sys=True)
