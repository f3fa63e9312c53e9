"""``fastgan bench``: throughput measured against baselines and physical limits, each
ratio from one run (these machines are too noisy to compare runs)."""
