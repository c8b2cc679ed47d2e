"""fastmvit.kernels: Triton kernels for MViTv2 (installed from the repository's `kernels/`).

Import through ``fastmvit.kernels``. This package imports neither ``fastmvit``'s model code nor
``fastmvit.reference``. The names below are the ops (functions); they shadow their modules as
attributes, so reach a module with ``importlib.import_module("fastmvit.kernels.<op>")``.
"""
from .backend import BACKENDS, get_backend, resolve_backend, use_backend
from .gelu_linear import gelu_linear
from .max_pool_tokens import max_pool_tokens
from .pool_attention import pool_attention
from .pool_qkv import pool_qkv
from .pool_qkv_attention import pool_qkv_attention

__all__ = ["BACKENDS", "gelu_linear", "get_backend", "max_pool_tokens", "pool_attention", "pool_qkv",
           "pool_qkv_attention", "resolve_backend", "use_backend"]
