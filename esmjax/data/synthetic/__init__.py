"""Synthetic Ali-CCP-like worlds with known ground truth, the default dataset of esmjax
(`python -m esmjax.data.synthetic`): the named worlds and their knobs (`worlds`), the causal
process that draws a world and its impressions (`generator`), writing, caching and statistics
(`cache`).

May import: `esmjax.common`, `esmjax.exits` and `esmjax.data.format`.
"""
