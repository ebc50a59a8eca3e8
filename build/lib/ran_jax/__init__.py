"""ran_jax: privacy-preserving representations with the Reconstructive Adversarial Network."""

__version__ = "0.1.0"
