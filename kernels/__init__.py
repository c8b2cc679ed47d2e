"""fastmvit.kernels: Triton kernels for MViTv2 (installed from the repository's `kernels/`).

The ops are the functions exported here (``fastmvit.kernels.pool_attention(...)``); each lives in
its own package ``fastmvit.kernels.ops.<op>``, laid out alike (docs/design.md, "Layout of an op"):
``__init__`` (the function, its checks, the design note), ``torch_impl`` (the plain torch twin),
``triton_impl`` (kernels, launchers, configs), ``op`` (custom ops, fakes, autograd) and
``compile_cases`` (what tools/gpu_compile.py compiles). This package imports neither ``fastmvit``'s
model code nor ``fastmvit.reference``; its own Triton code is imported when a kernel first runs.
"""
from .backend import BACKENDS, get_backend, resolve_backend, use_backend
from .ops.gelu_linear import gelu_linear
from .ops.max_pool_tokens import max_pool_tokens
from .ops.norm_linear import norm_linear
from .ops.pool_attention import pool_attention
from .ops.pool_qkv import pool_qkv
from .ops.pool_qkv_attention import pool_qkv_attention

# Ops with Triton kernels (their ops.<op>.compile_cases modules are what tools/gpu_compile.py compiles).
KERNEL_OPS = ("pool_attention", "pool_qkv", "max_pool_tokens", "gelu_linear", "norm_linear")

__all__ = ["BACKENDS", "KERNEL_OPS", "gelu_linear", "get_backend", "max_pool_tokens", "norm_linear", "pool_attention",
           "pool_qkv", "pool_qkv_attention", "resolve_backend", "use_backend"]
