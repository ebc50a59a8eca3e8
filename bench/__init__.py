"""Benchmarks of ran_jax: tools outside the library that import it (never the reverse).

One command, from the repository root:

  python -m bench [--cases=lenet_mnist:128 ...]   # training throughput: JAX vs PyTorch
  python -m bench input --config=configs/X.py     # input pipeline vs the trainer's consumption
  bash bench/accelerator.sh OUT_DIR               # the GPU/TPU run

Modules: `ran_bench` (cases, interleaved rounds, report), `engines` (the JAX and
PyTorch engines and the one input-rate helper), `torch_reference` (RAN in PyTorch,
imported only when torch is installed), `throughput` (the `input` command).
"""
