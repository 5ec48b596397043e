"""Flax models: ESMM, ESMM-NS, ESM2 and the papers' baselines; log-space losses."""
