"""fastmvit: MViTv2 made fast on NVIDIA GPUs, a drop-in for the reference model."""
from .kernels.backend import get_backend, use_backend

__version__ = "0.1.0"

__all__ = ["__version__", "get_backend", "use_backend"]
