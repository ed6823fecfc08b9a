"""Data pipeline: NIfTI readers, scan manifest, crop cache, MiM views, the unified sampler, synthetic data."""
