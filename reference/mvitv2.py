"""The reference MViTv2 image classifier (Li et al., CVPR 2022), faithful to facebookresearch/mvit.

    model = MViTv2("tiny")                        # or mvitv2_tiny(), or MViTv2(MViTv2Config(...))
    logits = model(images)                        # (B, 3, H, W) -> (B, num_classes)

Plain and readable, nothing optimized: the oracle for ``fastmvit``'s fused model. The state dict
uses the official key names (docs/checkpoints.md). Differences from the official model, on purpose:
the head returns logits in eval mode too (the official head applies a softmax), and any input size
works: the relative-position tables are resized at run time (``resize_rel_pos``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import BlockSpec, MViTv2Config, as_axes, block_specs, get_config
from .layers import MultiScaleBlock, PatchEmbed

__all__ = ["ClassifierHead", "MViTv2", "mvitv2_base", "mvitv2_base_cls", "mvitv2_huge_cls", "mvitv2_large",
           "mvitv2_large_cls", "mvitv2_small", "mvitv2_small_cls", "mvitv2_tiny"]


class ClassifierHead(nn.Module):
    """Dropout and ``projection`` Linear(dim, num_classes) on pooled features (B, dim);
    ``num_classes`` 0: no projection, features pass through."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.projection = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.dropout(x))


class MViTv2(nn.Module):
    """MViTv2 for image classification.

    Args (names follow mmpretrain's ``MViT``; None means "the arch's value"):
        arch: ``"tiny"``, ``"small"``, ``"base"``, ``"large"``, ``"small_cls"``, ``"base_cls"``,
            ``"large_cls"``, ``"huge_cls"``, or an ``MViTv2Config``.
        img_size: int or (H, W); sizes the relative-position tables. Other sizes run too.
        num_classes: classifier outputs; 0 builds no classifier (``forward`` returns pooled features).
        in_channels: image channels.
        out_scales: stages (0-based, negative allowed) ``forward_intermediates`` returns; default all.
        drop_path_rate: stochastic depth of the last block (linear over the blocks).
        drop_rate: dropout before the classifier.
        pool_kernel, adaptive_kv_stride, rel_pos_spatial, residual_pooling, dim_mul_in_attention,
        with_cls_token, mlp_ratio, qkv_bias: override the arch's config fields.
        rel_pos_zero_init: start the relative-position tables at zero (official option).

    Attributes: ``config`` (MViTv2Config), ``specs`` (list of BlockSpec), ``img_size`` (H, W),
    ``num_features`` (the last width). ``block_cls`` / ``_make_block`` and ``patch_embed_cls`` are
    the hooks a subclass overrides to build other blocks (and patch embedding) from the same plan.
    """
    block_cls = MultiScaleBlock
    patch_embed_cls = PatchEmbed

    def __init__(self, arch: str | MViTv2Config = "tiny", img_size: int | Sequence[int] = 224,
                 num_classes: int = 1000, in_channels: int = 3, out_scales: int | Sequence[int] | None = None,
                 drop_path_rate: float | None = None, drop_rate: float = 0.0,
                 pool_kernel: Sequence[int] | None = None, adaptive_kv_stride: int | None = None,
                 rel_pos_spatial: bool | None = None, residual_pooling: bool | None = None,
                 dim_mul_in_attention: bool | None = None, with_cls_token: bool | None = None,
                 mlp_ratio: float | None = None, qkv_bias: bool | None = None, rel_pos_zero_init: bool = False):
        super().__init__()
        cfg = get_config(arch, pool_kernel=pool_kernel, adaptive_kv_stride=adaptive_kv_stride,
                         rel_pos_spatial=rel_pos_spatial, residual_pooling=residual_pooling,
                         dim_mul_in_attention=dim_mul_in_attention, with_cls_token=with_cls_token,
                         mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path_rate=drop_path_rate)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        if len(img_size) != 2:
            raise ValueError(f"img_size must be an int or (H, W), got {img_size}")
        self._build(cfg, img_size, num_classes, in_channels, out_scales, drop_rate, rel_pos_zero_init)

    def _build(self, cfg: MViTv2Config, input_size: tuple[int, ...], num_classes: int, in_channels: int,
               out_scales, drop_rate: float, rel_pos_zero_init: bool) -> None:
        """Build the layers of ``cfg`` for inputs of ``input_size`` ((H, W), or (T, H, W) for video)."""
        if num_classes < 0 or in_channels < 1:
            raise ValueError(f"num_classes must be >= 0 and in_channels >= 1, got {num_classes}, {in_channels}")
        self.config = cfg
        self.img_size = tuple(input_size[-2:])
        self.input_size = tuple(input_size)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.specs: list[BlockSpec] = block_specs(cfg, self.input_size)
        self.num_stages = len(cfg.depths)
        self.out_scales = self._stage_indices(out_scales)
        self.rel_pos_zero_init = rel_pos_zero_init

        self.patch_embed = self.patch_embed_cls(in_channels, cfg.embed_dims, cfg.patch_kernel,
                                                cfg.patch_stride, cfg.patch_padding)
        if cfg.with_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dims))
        else:
            self.cls_token = None
        self.blocks = nn.ModuleList(self._make_block(spec) for spec in self.specs)
        self.num_features = self.specs[-1].dim_out
        self.norm = nn.LayerNorm(self.num_features, eps=cfg.norm_eps)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self.init_weights()

    # -- construction ------------------------------------------------------------------------------
    def _make_block(self, spec: BlockSpec) -> nn.Module:
        """Build block ``spec.index`` (override to build another block class from the same plan)."""
        cfg = self.config
        return self.block_cls(spec, has_cls_token=cfg.with_cls_token, qkv_bias=cfg.qkv_bias,
                              rel_pos_spatial=cfg.rel_pos_spatial, residual_pooling=cfg.residual_pooling,
                              norm_eps=cfg.norm_eps, rel_pos_zero_init=self.rel_pos_zero_init)

    def init_weights(self) -> None:
        """The official initialisation: Linear weights truncated normal (std 0.02) with zero bias,
        LayerNorm (1, 0), class token truncated normal (std 0.02); convolutions keep PyTorch's
        default; the relative-position tables are set by the attention (std 0.02 or zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _stage_indices(self, scales: int | Sequence[int] | None) -> tuple[int, ...]:
        if scales is None:
            return tuple(range(self.num_stages))
        scales = (scales,) if isinstance(scales, int) else tuple(scales)
        out = []
        for s in scales:
            if not -self.num_stages <= s < self.num_stages:
                raise ValueError(f"out_scales: stage {s} does not exist (the model has {self.num_stages} stages)")
            out.append(s % self.num_stages)
        return tuple(sorted(set(out)))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters to train without weight decay: the relative-position tables
        and the class token (official ZERO_DECAY_POS_CLS)."""
        return {name for name, _ in self.named_parameters()
                if name == "cls_token" or name.endswith((".rel_pos_h", ".rel_pos_w", ".rel_pos_t"))}

    # -- forward -----------------------------------------------------------------------------------
    input_kind = "image batch (B, C, H, W)"

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the problem for a batch the model cannot take."""
        ndim = self.config.ndim
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected an {self.input_kind} tensor, got {type(x).__name__}")
        if x.dim() != ndim + 2:
            raise ValueError(f"expected a {ndim + 2}-D {self.input_kind}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        stride = as_axes(self.config.patch_stride, ndim)
        if any(s < st for s, st in zip(x.shape[2:], stride)):
            raise ValueError(f"input {'x'.join(map(str, x.shape[2:]))} is smaller than the patch stride "
                             f"{'x'.join(map(str, stride))}")
        if x.shape[0] == 0:
            raise ValueError("empty batch")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point input batch, got {x.dtype}")
        weight = self.patch_embed.proj.weight
        if x.device != weight.device or x.dtype != weight.dtype:
            raise ValueError(f"input is {x.dtype} on {x.device} but the model is {weight.dtype} on {weight.device}")

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H_img, W_img) -> tokens (B, N, C0) with the class token in front, and the grid."""
        self.check_input(x)
        x, hw = self.patch_embed(x)                                    # (B, H*W, C0)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x, hw

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H_img, W_img) -> the final normed tokens (B, N_last, num_features)."""
        x, hw = self.embed(x)
        for blk in self.blocks:
            x, hw = blk(x, hw)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Final tokens (B, N, C) -> logits (B, num_classes): the class token, or the mean of all
        tokens without one (official), then the classifier. ``pre_logits``: stop before it."""
        x = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, out_scales: int | Sequence[int] | None = None
                              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The final features and per-stage feature maps (for detection backbones).

        Returns ``(features, maps)``: ``features`` exactly as ``forward_features(x)``; ``maps`` one
        (B, C_s, H_s, W_s) tensor per stage in ``out_scales`` (default: the model's), the stage's
        last block output without the class token, NOT normed (the main path is never changed).
        """
        wanted = self.out_scales if out_scales is None else self._stage_indices(out_scales)
        last_of_stage = {spec.index: spec.stage for spec in self.specs
                         if spec.index == len(self.specs) - 1 or self.specs[spec.index + 1].stage != spec.stage}
        sp = 1 if self.cls_token is not None else 0
        maps = []
        x, hw = self.embed(x)
        for i, blk in enumerate(self.blocks):
            x, hw = blk(x, hw)
            if last_of_stage.get(i) in wanted:
                B, _, C = x.shape
                maps.append(x[:, sp:].transpose(1, 2).reshape(B, C, *hw))
        return self.norm(x), maps


def named_constructor(cls: type, arch: str, doc: str, name: str | None = None):
    """``mvitv2_<arch>(**kwargs) -> cls(arch, **kwargs)`` (or another ``name``), documented (``doc``
    is its docstring); shared by the reference and the fused models' module-level constructors."""
    def build(**kwargs):
        return cls(arch, **kwargs)

    build.__name__ = build.__qualname__ = name or f"mvitv2_{arch}"
    build.__doc__ = doc
    return build


def _named(arch: str):
    return named_constructor(MViTv2, arch, f"MViTv2-{arch} (``MViTv2({arch!r}, **kwargs)``).")


mvitv2_tiny = _named("tiny")
mvitv2_small = _named("small")
mvitv2_base = _named("base")
mvitv2_large = _named("large")
mvitv2_small_cls = _named("small_cls")
mvitv2_base_cls = _named("base_cls")
mvitv2_large_cls = _named("large_cls")
mvitv2_huge_cls = _named("huge_cls")
