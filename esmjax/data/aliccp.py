"""python -m esmjax.data.aliccp: the raw Ali-CCP converter's command (`esmjax.data.ingest.aliccp`,
whose `convert` module documents the flags). Imported, it offers the converter's public names, so a
config file's `from esmjax.data import aliccp; aliccp.default_config()` reads as before."""

if __name__ == "__main__":
  import runpy

  runpy.run_module("esmjax.data.ingest.aliccp.convert", run_name="__main__", alter_sys=True)
else:
  from esmjax.data.ingest.aliccp.convert import (  # noqa: F401  (the converter's public names)
    ALL_KINDS,
    BAD_KINDS,
    WARN_KINDS,
    ConversionError,
    Spec,
    compile_config,
    convert,
    default_config,
  )
