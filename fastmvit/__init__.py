"""fastmvit: MViTv2 made fast on NVIDIA GPUs, a drop-in for the reference model."""
from .kernels.backend import get_backend, use_backend
from .checkpoint import convert_state_dict, load_checkpoint

__version__ = "0.1.0"

__all__ = ["__version__", "convert_state_dict", "get_backend", "load_checkpoint", "use_backend"]
