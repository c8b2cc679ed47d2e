"""The optimized detection backbone: detectron2's MViTv2 (``fastmvit.reference.MViTv2Backbone``) on
the fused kernels.

    backbone = fastmvit.MViTv2Backbone("tiny")          # detectron2's keyword names work too
    backbone.load_state_dict(reference.state_dict())     # detectron2's keys, both ways
    maps = backbone(images)                              # {"scale2": (B, 96, H/4, W/4), ..., "scale5"}

The blocks are the fused image blocks (``fastmvit.model.FusedMultiScaleBlock``: norm_linear,
pool_qkv, pool_attention, max_pool_tokens, gelu_linear), and the window blocks pass their windows
to ``pool_attention``: its programs read the windows of the pooled maps in place (no
``window_partition`` copy, no padded copies of q, k, v), keep detectron2's unmasked zero padding,
measure relative positions inside the window and add the un-windowed q (docs/design.md, "The
detection backbone"). The global blocks (the last of stages 3-5) are the image path, with the
tables resized at run time to the maps' sides. The patch embedding writes its tokens contiguous;
the ``scale*_norm`` LayerNorms and the NCHW views are torch's.

``use_act_checkpoint`` (detectron2's name) and ``set_grad_checkpointing`` recompute each block in
the backward (non-reentrant, per block).
"""
from __future__ import annotations

import torch

from .model import ChannelsLastPatchEmbed, FusedModel, FusedMultiScaleAttention, FusedMultiScaleBlock
from .reference import detection as _det

__all__ = ["FusedBackboneBlock", "FusedWindowedAttention", "MViTv2Backbone"]


class FusedWindowedAttention(FusedMultiScaleAttention, _det.WindowedMultiScaleAttention):
    """The reference's window (or global) attention, same parameters, on ``pool_qkv_attention``
    with ``pool_attention``'s windows: (B, H*W, dim) normed tokens -> (B, H'*W', dim_att)."""

    def attention_window(self):
        return (self.q_window, self.kv_window) if self.q_window else None


class FusedBackboneBlock(FusedMultiScaleBlock, _det.BackboneBlock):
    """A detectron2 MViTv2 block (``reference.BackboneBlock``'s parameters and plan) on the fused ops."""
    attention_cls = FusedWindowedAttention


class MViTv2Backbone(FusedModel, _det.MViTv2Backbone):
    """detectron2's MViTv2 backbone, fused: the reference's constructor (``arch`` or detectron2's
    keywords), ``forward`` (a dict of NCHW maps), ``output_shape()`` and state dict (detectron2's
    keys), with the blocks of this module.

    See ``fastmvit.reference.MViTv2Backbone`` for the arguments. Adds ``set_grad_checkpointing``.
    """
    block_cls = FusedBackboneBlock
    patch_embed_cls = ChannelsLastPatchEmbed

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_grad_checkpointing(self.use_act_checkpoint)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward (detectron2: ``use_act_checkpoint``)."""
        self.use_act_checkpoint = bool(enable)
        super().set_grad_checkpointing(enable)

    def _run_block(self, blk, x, hw):
        return blk(x, hw)                            # the fused block checkpoints itself when asked
