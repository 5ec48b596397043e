"""python -m esmjax.data.synthetic [cache_dir] [--world=paper] [--set=cvr=0.01 ...]: the command of
`esmjax.data.synthetic.cache`."""

import runpy

runpy.run_module("esmjax.data.synthetic.cache", run_name="__main__", alter_sys=True)
