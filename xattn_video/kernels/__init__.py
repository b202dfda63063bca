"""Triton kernels (estimate.py, block_sparse_attention.py) and their plain-PyTorch twins (reference.py)."""
