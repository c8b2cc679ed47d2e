"""The reference video MViTv2 (Kinetics), faithful to torchvision's ``mvit_v2_s`` and SlowFast.

    model = MViTv2Video("small")                  # or mvit_v2_s(), or MViTv2Video(MViTv2VideoConfig(...))
    logits = model(clips)                         # (B, 3, T, H, W) -> (B, num_classes)

The image model's network over a (T, H, W) token grid (docs/design.md, "The video model"): a
Conv3d patch embedding, Conv3d pooling of q, k and v, a MaxPool3d shortcut, and three decomposed
relative-position terms (rel_pos_t, rel_pos_h, rel_pos_w). The state dict uses SlowFast's key
names (docs/checkpoints.md; ``fastmvit.convert_state_dict`` maps torchvision's). Any clip size
runs: the tables are resized at run time, each axis on its own (torchvision hard-codes them to
the 16-frame 224 x 224 grid). The head returns logits in eval mode too.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import MViTv2VideoConfig, as_axes, get_video_config
from .mvitv2 import MViTv2, named_constructor

__all__ = ["MViTv2Video", "PatchEmbed3d", "mvit_v2_s", "mvitv2_video_base", "mvitv2_video_large",
           "mvitv2_video_small"]


class PatchEmbed3d(nn.Module):
    """Conv3d(in_channels, dim, kernel (3, 7, 7), stride (2, 4, 4), padding (1, 3, 3)) with bias,
    flattened to tokens: (B, C_in, T_in, H_img, W_img) -> (B, T*H*W, dim) and the grid (T, H, W)."""

    def __init__(self, in_channels: int = 3, dim: int = 96, kernel: Sequence[int] = (3, 7, 7),
                 stride: Sequence[int] = (2, 4, 4), padding: Sequence[int] = (1, 3, 3)):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=as_axes(kernel, 3), stride=as_axes(stride, 3),
                              padding=as_axes(padding, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        x = self.proj(x)                                         # (B, dim, T, H, W)
        thw = tuple(x.shape[-3:])
        return x.flatten(2).transpose(1, 2), thw                 # (B, T*H*W, dim)


class MViTv2Video(MViTv2):
    """MViTv2 for video classification.

    Args (None means "the arch's value"):
        arch: ``"small"`` (torchvision's ``mvit_v2_s``), ``"base"``, ``"large"``, or an
            ``MViTv2VideoConfig``.
        num_frames, img_size: the clip size (frames; int or (H, W)) the tables are sized for. Other
            sizes run too.
        num_classes: classifier outputs (400: Kinetics-400); 0 builds no classifier.
        drop_rate: the head's dropout (None: the arch's, 0.5).
        in_channels, out_scales, drop_path_rate, residual_pooling, mlp_ratio, qkv_bias,
        rel_pos_zero_init: as in ``MViTv2``; pool_kernel and adaptive_kv_stride are per axis
        (3 ints) or one int.

    ``forward_features`` returns (B, 1 + T*H*W, C); ``forward_intermediates`` maps are
    (B, C, T, H, W). ``input_size`` is (num_frames, H, W).
    """
    input_kind = "video batch (B, C, T, H, W)"
    patch_embed_cls = PatchEmbed3d

    def __init__(self, arch: str | MViTv2VideoConfig = "small", num_frames: int = 16,
                 img_size: int | Sequence[int] = 224, num_classes: int = 400, in_channels: int = 3,
                 out_scales: int | Sequence[int] | None = None, drop_path_rate: float | None = None,
                 drop_rate: float | None = None, pool_kernel: int | Sequence[int] | None = None,
                 adaptive_kv_stride: int | None = None, rel_pos_spatial: bool | None = None,
                 residual_pooling: bool | None = None, mlp_ratio: float | None = None,
                 qkv_bias: bool | None = None, rel_pos_zero_init: bool = False):
        nn.Module.__init__(self)
        cfg = get_video_config(arch, pool_kernel=None if pool_kernel is None else as_axes(pool_kernel, 3, "pool_kernel"),
                               adaptive_kv_stride=adaptive_kv_stride, rel_pos_spatial=rel_pos_spatial,
                               residual_pooling=residual_pooling, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                               drop_path_rate=drop_path_rate)
        hw = as_axes(img_size, 2, "img_size")
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        self.num_frames = num_frames
        self._build(cfg, (num_frames, *hw), num_classes, in_channels, out_scales,
                    cfg.head_drop_rate if drop_rate is None else drop_rate, rel_pos_zero_init)


def _named(arch: str, name: str | None = None):
    return named_constructor(MViTv2Video, arch, f"Video MViTv2-{arch} (``MViTv2Video({arch!r}, **kwargs)``).",
                             name or f"mvitv2_video_{arch}")


mvitv2_video_small = _named("small")
mvitv2_video_base = _named("base")
mvitv2_video_large = _named("large")
mvit_v2_s = _named("small", "mvit_v2_s")
mvit_v2_s.__doc__ = ("torchvision's ``mvit_v2_s``: video MViTv2-S for 16 x 224 x 224 clips and 400 classes "
                     "(34,537,744 parameters); ``MViTv2Video(\"small\", **kwargs)``.")
