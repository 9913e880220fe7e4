"""The defense itself: noise, k-means, aggregation, policy, adaptive sampling and the pipeline.

Imports no Triton, torch, CuPy (CuPy only when handed CuPy arrays) or client code, so the server,
the evaluation and a laptop run the very same algorithm (tests/smoothguard/test_layers.py).
"""
