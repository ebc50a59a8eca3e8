"""Aliases of the packaged configs (`ran_jax/configs/`), so that the paths
`--config=configs/<name>.py` and `from configs import <name>` keep working from the
repository root. Each config lives, documented, in `ran_jax/configs/<name>.py`."""
