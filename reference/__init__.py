"""fastmvit.reference: a plain, readable PyTorch MViTv2, faithful to the official model.

It is the oracle the optimized model and the kernels are tested against; ``MViTv2Backbone`` is
detectron2's MViTv2 detection backbone. It owns the architecture configs. It imports neither
``fastmvit``'s model code nor ``fastmvit.kernels``.
"""
from .config import (ARCH_SETTINGS, ARCHS, DETECTION_ARCH_SETTINGS, VIDEO_ARCH_SETTINGS, BackboneBlockSpec,
                     BackboneStageSpec, BlockSpec, MViTv2Config, MViTv2VideoConfig, backbone_block_specs,
                     backbone_stage_specs, block_specs, conv_out_size, get_config, get_detection_arch,
                     get_video_config, patch_grid, rel_pos_length)
from .layers import (DropPath, Mlp, MultiScaleAttention, MultiScaleBlock, PatchEmbed, add_decomposed_rel_pos,
                     drop_path, drop_path_mask, get_rel_pos, pool_tokens, pooling_attention, rel_pos_index, resize_rel_pos,
                     window_attention, window_grid, window_partition, window_unpartition)
from .video import MViTv2Video, PatchEmbed3d, mvit_v2_s, mvitv2_video_base, mvitv2_video_large, mvitv2_video_small
from .mvitv2 import (ClassifierHead, MViTv2, mvitv2_base, mvitv2_base_cls, mvitv2_huge_cls, mvitv2_large,
                     mvitv2_large_cls, mvitv2_small, mvitv2_small_cls, mvitv2_tiny)
from .detection import BackboneBlock, MViTv2Backbone, ShapeSpec, WindowedMultiScaleAttention, abs_pos_embed

__all__ = ["ARCHS", "ARCH_SETTINGS", "BlockSpec", "ClassifierHead", "DropPath", "MViTv2", "MViTv2Config",
           "MViTv2Video", "MViTv2VideoConfig", "Mlp", "PatchEmbed3d", "VIDEO_ARCH_SETTINGS", "get_video_config",
           "mvit_v2_s", "mvitv2_video_base", "mvitv2_video_large", "mvitv2_video_small",
           "MultiScaleAttention", "MultiScaleBlock", "PatchEmbed", "add_decomposed_rel_pos", "block_specs",
           "conv_out_size", "drop_path", "drop_path_mask", "get_config", "get_rel_pos", "mvitv2_base", "mvitv2_base_cls",
           "mvitv2_huge_cls", "mvitv2_large", "mvitv2_large_cls", "mvitv2_small", "mvitv2_small_cls",
           "mvitv2_tiny", "patch_grid", "pool_tokens", "pooling_attention", "rel_pos_index", "rel_pos_length",
           "resize_rel_pos",
           # the detection backbone (detectron2's MViT)
           "BackboneBlock", "BackboneBlockSpec", "BackboneStageSpec", "DETECTION_ARCH_SETTINGS", "MViTv2Backbone",
           "ShapeSpec", "WindowedMultiScaleAttention", "abs_pos_embed", "backbone_block_specs", "backbone_stage_specs",
           "get_detection_arch", "window_attention", "window_grid", "window_partition", "window_unpartition"]
