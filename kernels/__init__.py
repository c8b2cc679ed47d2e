"""fastmvit.kernels: Triton kernels for MViTv2 (installed from the repository's `kernels/`).

Import through ``fastmvit.kernels``. This package imports neither ``fastmvit``'s model code nor
``fastmvit.reference``.
"""
from .backend import BACKENDS, get_backend, resolve_backend, use_backend
from .pool_attention import pool_attention
from .pool_qkv import pool_qkv

__all__ = ["BACKENDS", "get_backend", "pool_attention", "pool_qkv", "resolve_backend", "use_backend"]
