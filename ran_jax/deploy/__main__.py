"""`python -m ran_jax.deploy ...`: the same command as `ran-deploy` (ran_jax/deploy/cli.py)."""

from ran_jax.deploy.cli import run

run()
