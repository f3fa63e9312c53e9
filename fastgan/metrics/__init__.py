"""How good a generator is, and how healthy a training run: FID and KID (fid.py) on
features from a pluggable extractor (features.py), ``fastgan eval`` (evaluate.py), and
the live diagnostics of the classic GAN failures (health.py)."""
