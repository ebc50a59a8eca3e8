"""Test setup: 4 fake CPU devices so every sharded step really runs on a mesh."""

import os
import sys

import jax

# Must happen before any JAX computation initialises the backend.
jax.config.update("jax_num_cpu_devices", 4)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
