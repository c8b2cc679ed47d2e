"""The reference MViTv2 detection backbone, faithful to detectron2's ``MViT`` (projects/MViTv2).

    backbone = MViTv2Backbone("tiny")             # or MViTv2Backbone(embed_dim=96, depth=10, ...)
    features = backbone(images)                   # (B, 3, H, W) -> {"scale2": (B, 96, H/4, W/4), ...}

The classifier's blocks with detectron2's plan (``backbone_block_specs``; docs/design.md, "The
detection backbone"): no class token; hybrid window attention (every block attends within windows
of the pooled maps except the last block of stages 3, 4 and 5, which is global); the key/value
stride doubled on the last block of stages 3 and 4; a LayerNorm per output (``scale{s}_norm``) and
NCHW feature maps at strides 4, 8, 16, 32. The state dict has detectron2's keys (the official
names plus ``scale{2..5}_norm``; ``pos_embed`` with ``use_abs_pos``), so ``fastmvit.load_checkpoint``
reads detectron2 detector checkpoints (``backbone.bottom_up.``) and the official ImageNet
``.pyth`` files detectors start from.

Tokens stay (B, H*W, C) between blocks with their (H, W) grid: the memory of detectron2's
(B, H, W, C) maps. Any input size runs: the tables are resized at run time (detectron2 too), and
``pos_embed`` (bicubic) with ``use_abs_pos``.
"""
from __future__ import annotations

import math
from collections import namedtuple
from typing import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .config import (DETECTION_DEFAULTS, BackboneBlockSpec, as_axes, backbone_block_specs, backbone_stage_specs,
                     get_detection_arch)
from .layers import MultiScaleAttention, MultiScaleBlock, PatchEmbed, pool_tokens, pooling_attention, window_attention

__all__ = ["BackboneBlock", "MViTv2Backbone", "ShapeSpec", "WindowedMultiScaleAttention", "abs_pos_embed"]


# detectron2's ``detectron2.layers.ShapeSpec``: the same fields in the same order, all optional.
ShapeSpec = namedtuple("ShapeSpec", ["channels", "height", "width", "stride"], defaults=(None, None, None, None))
ShapeSpec.__doc__ = "A feature map's channels, height, width and stride (detectron2's ShapeSpec); None: unknown."


def abs_pos_embed(pos_embed: torch.Tensor, has_cls_token: bool, hw: Sequence[int]) -> torch.Tensor:
    """The absolute position embedding for an (H, W) token grid, as detectron2's ``get_abs_pos``.

    pos_embed: (1, [1 +] S*S, C) for a square S x S pretraining grid (the first row, the class
    token's, is dropped when ``has_cls_token``). Returns (1, H, W, C): the S x S grid as is, or
    resized bicubically (align_corners False) when (H, W) differs.
    """
    if has_cls_token:
        pos_embed = pos_embed[:, 1:]
    n = pos_embed.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"pos_embed holds {n} grid positions: not a square grid")
    h, w = hw
    grid = pos_embed.reshape(1, side, side, -1)                          # (1, S, S, C)
    if (side, side) == (h, w):
        return grid
    resized = F.interpolate(grid.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1)                                   # (1, H, W, C)


class WindowedMultiScaleAttention(MultiScaleAttention):
    """Pooling attention with detectron2's windows: (B, H*W, dim) -> (B, H'*W', dim_att).

    The parameters and their names are ``MultiScaleAttention``'s (no class token). q, k and v
    are pooled and normed on the whole map (``pool_tokens``); then, when ``q_window`` > 0,
    ``window_attention`` cuts q into q_window x q_window windows and k, v into kv_window x
    kv_window windows (zero padding, window-local relative positions, residual with the
    un-windowed q); with ``q_window`` 0 the block is global (``pooling_attention``).
    """

    def __init__(self, dim: int, dim_att: int, num_heads: int, *, q_window: int = 0, kv_window: int = 0, **kwargs):
        super().__init__(dim, dim_att, num_heads, **kwargs)
        if (q_window > 0) != (kv_window > 0) or q_window < 0 or kv_window < 0:
            raise ValueError(f"q_window and kv_window must both be positive (window attention) or both 0 "
                             f"(global), got {q_window}, {kv_window}")
        if self.has_cls_token and q_window:
            raise ValueError("window attention has no class token")
        self.q_window, self.kv_window = int(q_window), int(kv_window)

    def forward(self, x: torch.Tensor, hw_shape: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """x: (B, H*W, dim) normed tokens on the (H, W) map -> (B, H'*W', dim_att) and the q map (H', W')."""
        if x.dim() != 3 or x.shape[-1] != self.qkv.in_features:
            raise ValueError(f"WindowedMultiScaleAttention expects tokens (B, N, {self.qkv.in_features}), "
                             f"got shape {tuple(x.shape)}")
        B = x.shape[0]
        q, k, v = self.project_qkv(x)                                                # (B, n, H*W, hd)
        q, q_shape = pool_tokens(q, self.pool_q, hw_shape, self.has_cls_token, self.norm_q)  # (B, n, Nq, hd)
        k, k_shape = pool_tokens(k, self.pool_k, hw_shape, self.has_cls_token, self.norm_k)  # (B, n, Nk, hd)
        v, _ = pool_tokens(v, self.pool_v, hw_shape, self.has_cls_token, self.norm_v)
        if self.q_window:
            out = window_attention(q, k, v, q_shape, k_shape, self.q_window, self.kv_window,
                                   self.rel_pos_h, self.rel_pos_w, self.residual_pooling)  # (B, n, Nq, hd)
        else:
            out = pooling_attention(q, k, v, q_shape, k_shape, self.rel_pos_h, self.rel_pos_w,
                                    self.has_cls_token, self.residual_pooling)
        out = out.transpose(1, 2).reshape(B, -1, self.dim_att)                       # (B, Nq, dim_att)
        return self.proj(out), q_shape

    def extra_repr(self) -> str:
        return f"q_window={self.q_window}, kv_window={self.kv_window}"


class BackboneBlock(MultiScaleBlock):
    """One block of the detection backbone: ``MultiScaleBlock`` (dim change in attention, shortcut
    ``proj(norm1(x))``, max-pooled where q is strided) with windowed attention, built from a
    ``BackboneBlockSpec`` (its ``q_window`` / ``kv_window`` reach the attention through
    ``attention_kwargs``)."""
    attention_cls = WindowedMultiScaleAttention

    def attention_kwargs(self, spec: BackboneBlockSpec) -> dict:
        return {"q_window": spec.q_window, "kv_window": spec.kv_window}


class MViTv2Backbone(nn.Module):
    """detectron2's MViTv2 detection backbone (``detectron2.modeling.MViT``).

    Args (detectron2's names and defaults; ``norm_eps`` stands for its ``norm_layer``, 1e-6 as in
    every projects/MViTv2 config):
        arch: ``"tiny"``, ``"small"``, ``"base"``, ``"large"``, ``"huge"`` (``DETECTION_ARCH_SETTINGS``)
            or None: fills ``embed_dim``, ``depth``, ``num_heads`` and ``last_block_indexes``
            where they are not given; without an arch, detectron2's defaults (96, 16, 1,
            (0, 2, 11, 15)) fill them.
        img_size: sizes the relative-position tables (square: detectron2 asserts it); any input
            size runs.
        patch_kernel, patch_stride, patch_padding, in_chans: the patch embedding Conv2d.
        qkv_pool_kernel, adaptive_kv_stride, adaptive_window_size, residual_pooling, mlp_ratio,
        qkv_bias, drop_path_rate: as detectron2 (``backbone_block_specs``). The configs train
            tiny/small at drop_path_rate 0.2, base 0.4, large 0.5, huge 0.6.
        use_abs_pos: a ``pos_embed`` of the pretraining grid (``pretrain_img_size``, with a class
            position when ``pretrain_use_cls_token``), resized bicubically at run time.
        use_rel_pos, rel_pos_zero_init: relative positions; tables start at zero (detectron2's default).
        use_act_checkpoint: recompute each block in the backward pass (torch.utils.checkpoint,
            non-reentrant) in training.
        out_features: the outputs ``forward`` returns, among ``"scale2"`` .. ``"scale5"``.

    Attributes: ``specs`` (list of ``BackboneBlockSpec``), ``stages`` (list of
    ``BackboneStageSpec``), ``img_size``, ``embed_dim``, ``depth``, ``num_heads``,
    ``last_block_indexes``, and detectron2's ``_out_features``, ``_out_feature_channels``,
    ``_out_feature_strides``, ``_last_block_indexes``. ``block_cls`` / ``_make_block`` and
    ``patch_embed_cls`` are the hooks a subclass overrides to build other blocks (and patch
    embedding) from the same plan.
    """
    block_cls = BackboneBlock
    patch_embed_cls = PatchEmbed

    def __init__(self, arch: str | None = None, *, img_size: int = 224, patch_kernel: Sequence[int] = (7, 7),
                 patch_stride: Sequence[int] = (4, 4), patch_padding: Sequence[int] = (3, 3), in_chans: int = 3,
                 embed_dim: int | None = None, depth: int | None = None, num_heads: int | None = None,
                 last_block_indexes: Sequence[int] | None = None, qkv_pool_kernel: Sequence[int] = (3, 3),
                 adaptive_kv_stride: int = 4, adaptive_window_size: int = 56, residual_pooling: bool = True,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 use_abs_pos: bool = False, use_rel_pos: bool = True, rel_pos_zero_init: bool = True,
                 use_act_checkpoint: bool = False, pretrain_img_size: int = 224, pretrain_use_cls_token: bool = True,
                 out_features: Sequence[str] = ("scale2", "scale3", "scale4", "scale5"), norm_eps: float = 1e-6):
        super().__init__()
        base = DETECTION_DEFAULTS if arch is None else get_detection_arch(arch)
        given = (embed_dim, depth, num_heads, last_block_indexes)
        embed_dim, depth, num_heads, last_block_indexes = (b if g is None else g for g, b in zip(given, base))
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        patch_kernel, patch_stride, patch_padding = (as_axes(v, 2, n) for v, n in (
            (patch_kernel, "patch_kernel"), (patch_stride, "patch_stride"), (patch_padding, "patch_padding")))
        self.arch = arch
        self.img_size = as_axes(img_size, 2, "img_size")
        self.embed_dim, self.depth, self.num_heads = int(embed_dim), int(depth), int(num_heads)
        self.last_block_indexes = tuple(int(i) for i in last_block_indexes)
        self.in_chans = in_chans
        self.patch_stride = patch_stride
        self.qkv_bias, self.use_rel_pos, self.residual_pooling = qkv_bias, use_rel_pos, residual_pooling
        self.rel_pos_zero_init, self.norm_eps = rel_pos_zero_init, norm_eps
        self.use_act_checkpoint = use_act_checkpoint
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.specs: list[BackboneBlockSpec] = backbone_block_specs(
            self.embed_dim, self.depth, self.num_heads, self.last_block_indexes, img_size=self.img_size,
            patch_kernel=patch_kernel, patch_stride=patch_stride, patch_padding=patch_padding,
            qkv_pool_kernel=qkv_pool_kernel, adaptive_kv_stride=adaptive_kv_stride,
            adaptive_window_size=adaptive_window_size, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate,
            use_rel_pos=use_rel_pos)
        self.stages = backbone_stage_specs(self.embed_dim, self.last_block_indexes, patch_stride)
        names = [s.name for s in self.stages]
        out_features = (out_features,) if isinstance(out_features, str) else tuple(out_features)
        unknown = [n for n in out_features if n not in names]
        if unknown:
            raise ValueError(f"out_features {unknown} do not exist: the backbone's outputs are {names}")

        self.patch_embed = self.patch_embed_cls(in_chans, self.embed_dim, patch_kernel, patch_stride, patch_padding)
        if use_abs_pos:
            # Sized for the pretraining grid (and its class token), as detectron2.
            num_patches = (pretrain_img_size // patch_stride[0]) * (pretrain_img_size // patch_stride[1])
            num_positions = num_patches + 1 if pretrain_use_cls_token else num_patches
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, self.embed_dim))
        else:
            self.pos_embed = None
        self.blocks = nn.ModuleList(self._make_block(spec) for spec in self.specs)
        self._out_feature_channels: dict[str, int] = {}
        self._out_feature_strides: dict[str, int] = {}
        for stage in self.stages:
            if stage.name in out_features:
                self._out_feature_channels[stage.name] = stage.channels
                self._out_feature_strides[stage.name] = stage.stride
                self.add_module(f"{stage.name}_norm", nn.LayerNorm(stage.channels, eps=norm_eps))
        self._out_features = out_features
        self._last_block_indexes = self.last_block_indexes
        self.init_weights()

    # -- construction ------------------------------------------------------------------------------
    def _make_block(self, spec: BackboneBlockSpec) -> nn.Module:
        """Build block ``spec.index`` (override to build another block class from the same plan)."""
        return self.block_cls(spec, has_cls_token=False, qkv_bias=self.qkv_bias, rel_pos_spatial=self.use_rel_pos,
                              residual_pooling=self.residual_pooling, norm_eps=self.norm_eps,
                              rel_pos_zero_init=self.rel_pos_zero_init)

    def init_weights(self) -> None:
        """detectron2's initialisation: ``pos_embed`` truncated normal (std 0.02), then Linear
        weights truncated normal (std 0.02) with zero bias and LayerNorm (1, 0), in module order;
        convolutions keep PyTorch's default; the tables are set by the attention (zero by default)."""
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters detectron2's configs train without weight decay:
        ``pos_embed`` and the relative-position tables."""
        return {name for name, _ in self.named_parameters()
                if name == "pos_embed" or name.endswith((".rel_pos_h", ".rel_pos_w"))}

    # -- detectron2's Backbone interface -----------------------------------------------------------
    def output_shape(self) -> dict[str, ShapeSpec]:
        """{name: ShapeSpec(channels, stride)} per output, as detectron2's ``Backbone.output_shape``."""
        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
                for name in self._out_features}

    @property
    def size_divisibility(self) -> int:
        """detectron2's ``Backbone.size_divisibility``: 0, any input size works."""
        return 0

    @property
    def padding_constraints(self) -> dict:
        """detectron2's ``Backbone.padding_constraints``: none."""
        return {}

    # -- forward -----------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` (``TypeError``) naming the problem for a batch the backbone cannot take."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected an image batch (B, C, H, W) tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        if x.shape[0] == 0 or min(x.shape[2:]) == 0:
            raise ValueError(f"empty batch or image: shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point image batch, got {x.dtype}")
        weight = self.patch_embed.proj.weight
        if x.device != weight.device or x.dtype != weight.dtype:
            raise ValueError(f"input is {x.dtype} on {x.device} but the backbone is {weight.dtype} on {weight.device}")

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H_img, W_img) -> tokens (B, H*W, C0) (with ``pos_embed`` added) and the grid (H, W)."""
        self.check_input(x)
        x, hw = self.patch_embed(x)                                          # (B, H*W, C0)
        if self.pos_embed is not None:
            x = x + abs_pos_embed(self.pos_embed, self.pretrain_use_cls_token, hw).reshape(1, -1, x.shape[-1])
        return x, tuple(hw)

    def _run_block(self, blk: nn.Module, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.use_act_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
        return blk(x, hw)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, H_img, W_img) -> {name: (B, C_s, H_s, W_s)} for the names in ``out_features``:
        each stage's last block output after its ``scale{s}_norm``, NCHW (a view of the
        channels-last tokens, as detectron2's permute)."""
        x, hw = self.embed(x)
        outputs = {}
        for spec, blk in zip(self.specs, self.blocks):
            x, hw = self._run_block(blk, x, hw)                              # (B, H'*W', C')
            if spec.out_name in self._out_features:
                y = getattr(self, f"{spec.out_name}_norm")(x)                # (B, H'*W', C')
                outputs[spec.out_name] = y.transpose(1, 2).unflatten(2, hw)  # (B, C', H', W')
        return outputs

    def extra_repr(self) -> str:
        return (f"arch={self.arch!r}, embed_dim={self.embed_dim}, depth={self.depth}, num_heads={self.num_heads}, "
                f"last_block_indexes={self.last_block_indexes}, out_features={self._out_features}")
