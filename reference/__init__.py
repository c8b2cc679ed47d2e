"""fastmvit.reference: a plain, readable PyTorch MViTv2, faithful to the official model.

It is the oracle the optimized model and the kernels are tested against. It owns the
architecture configs. It imports neither ``fastmvit``'s model code nor ``fastmvit.kernels``.
"""
