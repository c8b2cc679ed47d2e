"""fastmvit: MViTv2 made fast on NVIDIA GPUs, a drop-in for the reference model."""
from pathlib import Path as _Path

# Imported from a source checkout without installing (``PYTHONPATH=<repo>``, as `make gpu-check` does
# on a GPU box that must not pip-install): fastmvit.kernels and fastmvit.reference are the checkout's
# kernels/ and reference/ folders (an install maps them with setuptools' package-dir instead).
_HERE = _Path(__file__).resolve().parent
if (_HERE.parent / "kernels" / "backend.py").is_file() and not (_HERE / "kernels").is_dir():
    __path__.append(str(_HERE.parent))
from .kernels.backend import get_backend, use_backend
from .checkpoint import convert_state_dict, load_checkpoint
from .macs import count_macs
from .costmodel import count_traffic, saved_activation_bytes, training_step_traffic
from .detection import MViTv2Backbone
from .model import (MViTv2, MViTv2Video, mvit_v2_s, mvitv2_base, mvitv2_base_cls, mvitv2_huge_cls, mvitv2_large,
                    mvitv2_large_cls, mvitv2_small, mvitv2_small_cls, mvitv2_tiny, mvitv2_video_base,
                    mvitv2_video_large, mvitv2_video_small)

__version__ = "0.1.0"

__all__ = ["MViTv2", "MViTv2Backbone", "MViTv2Video", "__version__", "mvit_v2_s", "mvitv2_video_base", "mvitv2_video_large",
           "mvitv2_video_small", "convert_state_dict", "count_macs", "count_traffic", "get_backend", "load_checkpoint",
           "mvitv2_base", "mvitv2_base_cls", "mvitv2_huge_cls", "mvitv2_large", "mvitv2_large_cls",
           "mvitv2_small", "mvitv2_small_cls", "mvitv2_tiny",
           "saved_activation_bytes", "training_step_traffic", "use_backend"]
