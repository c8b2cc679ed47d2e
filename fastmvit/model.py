"""The optimized MViTv2: the reference model on the fused kernels (pooling, attention, MLP tail).

    model = fastmvit.MViTv2("tiny")              # or fastmvit.mvitv2_tiny(), or MViTv2(MViTv2Config(...))
    model.load_state_dict(reference.state_dict())  # same keys, same shapes, both ways
    logits = model(images)                       # (B, 3, H, W) -> (B, num_classes)

A drop-in for ``fastmvit.reference.MViTv2``: same constructor, configs, block plan, methods and
state dict (the modules here subclass the reference's and create no parameter or persistent buffer
of their own). What changes is the forward of each block:

- attention: ``qkv`` Linear -> ``pool_qkv`` (depthwise-conv pooling + LayerNorm of q, k, v, read
  straight out of the Linear's (B, N, 3 * dim) output) -> ``pool_attention`` (scores, rel-pos bias,
  softmax, @ v and the residual q in one op; its output is a view of a (B, Nq, heads, hd) buffer,
  so the heads merge for the ``proj`` Linear without a copy). Two ops where the eager model runs
  about 30 (permute copies, class-token split/cat, convs, norms, index gathers, einsums, pad,
  softmax...). Both go through ``pool_qkv_attention``, which keeps only qkv for the backward and
  rebuilds q, k, v there (one more ``pool_qkv`` launch per block, no q, k, v kept).
- MLP: ``fc1`` Linear -> ``gelu_linear`` (exact GELU in the GEMM prologue, ``fc2``, stochastic
  depth as a per-sample scale and the residual add in the epilogue). gelu(h) is never written and
  only h is kept for backward.
- residual max-pool shortcut (the blocks where q is strided): ``max_pool_tokens``, one op on the
  token layout, class token passed through, keeping a uint8 argmax for backward.
- patch embedding (``ChannelsLastPatchEmbed``): a channels-last conv weight, so the tokens come out
  contiguous.
- relative-position tables: resized only when the input size needs another length, decided from
  Python ints (shapes), so no op and no host-device sync runs at the construction size.
- LayerNorms: ``norm1`` and ``norm2`` are folded into the GEMMs that read them (``norm_linear``:
  qkv and fc1, and the width-change shortcut ``proj``): the normalisation is the GEMM's prologue,
  so the normed activations are neither written nor kept for backward.
- the attention projection: ``shortcut + drop_path(proj(a))`` is one ``gelu_linear`` launch with
  its GELU off (bias, per-sample keep scale and residual add in the GEMM epilogue; in the
  width-change blocks the shortcut is the pooled shortcut ``proj``).

Which implementation the fused ops run is ``fastmvit.use_backend``'s choice: ``auto`` runs the
Triton kernels on CUDA tensors and plain torch elsewhere, so the model works on any device.

Training: autocast (bf16, fp16), ``set_grad_checkpointing()`` (per block, non-reentrant),
stochastic depth, ``no_weight_decay()`` (inherited: rel-pos tables and class token),
``torch.compile(model, fullgraph=True)`` (the fused ops are custom ops with fake implementations),
DDP (every parameter gets a gradient in every step).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .kernels import gelu_linear, max_pool_tokens, norm_linear, pool_qkv_attention
from .reference import mvitv2 as _ref
from .reference import video as _video
from .reference.config import rel_pos_length
from .reference.layers import (DropPath, MultiScaleAttention, MultiScaleBlock, PatchEmbed, drop_path_mask,
                               resize_rel_pos)
from .reference.video import PatchEmbed3d

__all__ = ["ChannelsLastPatchEmbed", "ChannelsLastPatchEmbed3d", "FusedModel", "FusedMultiScaleAttention",
           "FusedMultiScaleBlock", "MViTv2", "MViTv2Video", "mvit_v2_s", "mvitv2_base", "mvitv2_base_cls",
           "mvitv2_huge_cls", "mvitv2_large", "mvitv2_large_cls", "mvitv2_small", "mvitv2_small_cls", "mvitv2_tiny",
           "mvitv2_video_base", "mvitv2_video_large", "mvitv2_video_small"]


class FusedMultiScaleAttention(MultiScaleAttention):
    """The reference's pooling attention (same parameters) computed by the two fused ops.

    ``forward(x, hw_shape)``: x (B, N, dim) normed tokens on the (H, W) grid, N = H * W (+ 1 with a
    class token) -> (B, Nq, dim_att) and the q grid (qh, qw). ``attend`` stops before the output
    projection and returns its input, (B, Nq, dim_att) (a free view of the attention output).
    """

    def attend(self, x: torch.Tensor, hw_shape: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int]]:
        return self.attend_qkv(self.qkv(x), hw_shape)

    def attend_qkv(self, qkv: torch.Tensor, hw_shape: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """``attend`` from the qkv projection's output (B, N, 3 * dim_att) (the block computes it
        with its norm folded in)."""
        B = qkv.shape[0]
        # pool_qkv -> pool_attention; for backward only qkv is kept (q, k, v are recomputed).
        # rel_pos_tables gets the grids positions are measured on: the maps, or the windows' sides.
        out, q_size = pool_qkv_attention(
            qkv, tuple(hw_shape), self.num_heads,
            (self.pool_q.weight, self.pool_k.weight, self.pool_v.weight),
            (self.norm_q.weight, self.norm_k.weight, self.norm_v.weight),
            (self.norm_q.bias, self.norm_k.bias, self.norm_v.bias),
            self.stride_q, self.stride_kv, None, None, has_cls_token=self.has_cls_token,
            residual_pooling=self.residual_pooling, scale=self.scale, eps=self.norm_q.eps,
            rel_pos_tables=self.rel_pos_tables, window=self.attention_window())   # (B, n, Nq, hd)
        # A view of a (B, Nq, n, hd) buffer: merging the heads is free.
        return out.transpose(1, 2).reshape(B, -1, self.dim_att), q_size

    def attention_window(self):
        """``pool_attention``'s window: None (global attention); the detection backbone's window
        blocks override it."""
        return None

    def rel_pos_tables(self, q_size: Sequence[int], k_size: Sequence[int], dtype: torch.dtype) -> tuple:
        """The tables at the lengths the grids need, in ``dtype`` (the op wants q's dtype).

        At the construction size (the usual case) they are the parameters themselves: no op runs.
        Another input size resizes them as the reference does (``resize_rel_pos``, linear,
        align_corners False, in the table's dtype) before the cast, so both models agree."""
        # resize_rel_pos returns the table itself when the length already fits; .to is a no-op when
        # the dtype matches. In grid-axis order ((h, w), or (t, h, w) for video); () without tables.
        return tuple(resize_rel_pos(table, rel_pos_length(qa, ka)).to(dtype)
                     for table, qa, ka in zip(self.rel_pos_tables_nd(), q_size, k_size))

    def forward(self, x: torch.Tensor, hw_shape: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int]]:
        out, q_size = self.attend(x, hw_shape)
        return self.proj(out), q_size


class FusedMultiScaleBlock(MultiScaleBlock):
    """The reference block (same parameters, same plan) on the fused attention.

    ``forward(x, hw_shape)``: x (B, N, dim) on the (H, W) grid -> (B, N', dim_out) on the q grid.
    With ``grad_checkpointing`` set (``MViTv2.set_grad_checkpointing``) and grad enabled in
    training, the block's activations are recomputed in the backward (non-reentrant checkpoint; the
    RNG state is restored, so stochastic depth draws the same masks).
    """
    attention_cls = FusedMultiScaleAttention
    grad_checkpointing = False

    def _drop_path_rate(self) -> float:
        """The stochastic-depth rate in force (0 in eval mode or when the block has none)."""
        if not self.training or not isinstance(self.drop_path, DropPath):
            return 0.0
        return float(self.drop_path.p)

    @staticmethod
    def _keep_scale(x: torch.Tensor, p: float):
        """Stochastic depth as a per-sample multiplier (B,) for ``gelu_linear``: the keep mask
        (the reference's ``drop_path_mask``: (B, 1, 1) bernoulli(1 - p) in x's dtype) over
        1 - p, in float32 at least (1 / keep is not a half-precision number); None when nothing
        is dropped."""
        if p == 0.0:
            return None
        keep = 1.0 - p
        mask = drop_path_mask(x, keep)
        return mask.view(-1).to(torch.promote_types(mask.dtype, torch.float32)) / keep

    @staticmethod
    def _normed_linear(norm: torch.nn.LayerNorm, x: torch.Tensor, linear: torch.nn.Linear, keep_input: bool = False):
        """``linear(norm(x))`` as one ``norm_linear`` (the LayerNorm in the GEMM's prologue); with
        keep_input also x, to use in its place (see ``norm_linear``)."""
        return norm_linear(x, norm.weight, norm.bias, linear.weight, linear.bias, eps=norm.eps, keep_input=keep_input)

    def _shortcut_pool(self, x: torch.Tensor, hw_shape: Sequence[int]) -> torch.Tensor:
        """Max-pool the grid tokens of x (B, N, C) where q is strided; the class token bypasses
        the pool. One op on the token layout, keeping a uint8 argmax for backward (not x and
        int64 indices)."""
        if self.pool_skip is None:
            return x
        pool = self.pool_skip
        return max_pool_tokens(x, tuple(hw_shape), pool.kernel_size, pool.stride,
                               has_cls_token=self.has_cls_token)

    def _forward(self, x: torch.Tensor, hw_shape: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int]]:
        p = self._drop_path_rate()
        attn = self.attn
        # norm1 folded into the qkv GEMM (and into the shortcut proj's): the normed x is never stored.
        # x comes back for its other uses, so that its two gradients add up in the norm's backward.
        qkv, x = self._normed_linear(self.norm1, x, attn.qkv, keep_input=True)   # (B, N, 3 * dim_att)
        a, hw_new = attn.attend_qkv(qkv, hw_shape)                         # (B, N', dim_att), before proj
        if self.dim_change == "attention":
            shortcut = self._shortcut_pool(self._normed_linear(self.norm1, x, self.proj), hw_shape)
        else:
            shortcut = self._shortcut_pool(x, hw_shape)
        # x = shortcut + drop_path(proj(a)): the projection with its bias, the keep scale and the
        # residual add in the GEMM epilogue (gelu_linear without its GELU)
        x = gelu_linear(a, attn.proj.weight, attn.proj.bias, residual=shortcut,
                        sample_scale=self._keep_scale(a, p), gelu=False)
        mlp = self.mlp
        h, x = self._normed_linear(self.norm2, x, mlp.fc1, keep_input=True)   # (B, N', mlp_hidden)
        shortcut = self._normed_linear(self.norm2, x, self.proj) if self.dim_change == "mlp" else x
        # GELU, fc2, stochastic depth and the residual add in one op (gelu(h) never stored)
        return gelu_linear(h, mlp.fc2.weight, mlp.fc2.bias, residual=shortcut,
                           sample_scale=self._keep_scale(h, p)), hw_new

    def forward(self, x: torch.Tensor, hw_shape: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, tuple(hw_shape), use_reentrant=False)
        return self._forward(x, hw_shape)


class _ChannelsLastConv:
    """A patch embedding whose conv weight is channels-last (see ``ChannelsLastPatchEmbed``)."""
    memory_format = torch.channels_last
    conv = staticmethod(F.conv2d)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.proj.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        conv = self.proj
        weight = conv.weight
        if not weight.is_contiguous(memory_format=self.memory_format):
            weight = weight.contiguous(memory_format=self.memory_format)
        x = self.conv(x, weight, conv.bias, conv.stride, conv.padding)      # (B, C0, *grid), channels last
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])             # (B, tokens, C0), contiguous


class ChannelsLastPatchEmbed(_ChannelsLastConv, PatchEmbed):
    """The reference's patch embedding (same parameters) with a channels-last conv weight: the conv
    then writes (B, H, W, C0), so the token view (B, H * W, C0) is contiguous, and the first
    LayerNorm and GEMMs read it without the copy a (B, C0, H, W) output would cost them. Values,
    keys and shapes are unchanged; load_state_dict and .to() keep the layout, and a weight replaced
    by one of another layout (``load_state_dict(..., assign=True)``) is converted in ``forward``.

    (B, C_in, H_img, W_img) -> (B, H * W, C0) contiguous, and the grid (H, W)."""


class ChannelsLastPatchEmbed3d(_ChannelsLastConv, PatchEmbed3d):
    """The video model's patch embedding with a channels-last-3d conv weight (as
    ``ChannelsLastPatchEmbed``): (B, C_in, T_in, H_img, W_img) -> (B, T * H * W, C0) contiguous,
    and the grid (T, H, W)."""
    memory_format = torch.channels_last_3d
    conv = staticmethod(F.conv3d)


class FusedModel:
    """What the fused models add to the reference's: ``set_grad_checkpointing``."""

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward instead of keeping them (timm's
        name). Only in training mode with grad enabled; inference is unchanged."""
        for blk in self.blocks:
            blk.grad_checkpointing = bool(enable)

    @property
    def grad_checkpointing(self) -> bool:
        return any(blk.grad_checkpointing for blk in self.blocks)


class MViTv2(FusedModel, _ref.MViTv2):
    """MViTv2 for image classification, fused: the reference's constructor, configs, methods
    (``forward``, ``forward_features``, ``forward_head``, ``forward_intermediates``,
    ``no_weight_decay``) and state dict, with the blocks of this module.

    See ``fastmvit.reference.MViTv2`` for the arguments. Adds ``set_grad_checkpointing(enable)``.
    """
    block_cls = FusedMultiScaleBlock
    patch_embed_cls = ChannelsLastPatchEmbed


class MViTv2Video(FusedModel, _video.MViTv2Video):
    """Video MViTv2, fused: the reference's constructor (``arch``, ``num_frames``, ``img_size``, ...),
    methods and state dict, with the blocks of this module over (T, H, W) grids (three rel-pos
    terms in ``pool_attention``, 3x3x3 ``pool_qkv``, a (1, 3, 3) ``max_pool_tokens`` shortcut).

    See ``fastmvit.reference.MViTv2Video`` for the arguments. Adds ``set_grad_checkpointing(enable)``.
    """
    block_cls = FusedMultiScaleBlock
    patch_embed_cls = ChannelsLastPatchEmbed3d


def _named(arch: str):
    return _ref.named_constructor(MViTv2, arch, f"Fused MViTv2-{arch} (``fastmvit.MViTv2({arch!r}, **kwargs)``).")


mvitv2_tiny = _named("tiny")
mvitv2_small = _named("small")
mvitv2_base = _named("base")
mvitv2_large = _named("large")
mvitv2_small_cls = _named("small_cls")
mvitv2_base_cls = _named("base_cls")
mvitv2_large_cls = _named("large_cls")
mvitv2_huge_cls = _named("huge_cls")


def _named_video(arch: str, name: str | None = None):
    return _ref.named_constructor(MViTv2Video, arch, f"Fused video MViTv2-{arch} (``fastmvit.MViTv2Video({arch!r}, **kwargs)``).",
                                  name or f"mvitv2_video_{arch}")


mvitv2_video_small = _named_video("small")
mvitv2_video_base = _named_video("base")
mvitv2_video_large = _named_video("large")
mvit_v2_s = _named_video("small", "mvit_v2_s")
mvit_v2_s.__doc__ = ("torchvision's ``mvit_v2_s`` (fused): video MViTv2-S for 16 x 224 x 224 clips and 400 classes "
                     "(34,537,744 parameters); ``fastmvit.MViTv2Video(\"small\", **kwargs)``.")
