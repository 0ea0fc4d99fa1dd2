"""Benchmarks of lth_jax, outside the library: they use its public API only.

  python benchmarks/bench.py --help     (or, from the repo root, python -m benchmarks.bench --help)
"""
