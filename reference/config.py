"""MViTv2 architecture configs and the per-block plan.

``MViTv2Config`` holds what defines an architecture (widths, heads, depths, pooling, options);
``ARCH_SETTINGS`` names the public ones (docs/design.md, "The image model"). ``block_specs(config, img_size)`` turns a
config into the list of ``BlockSpec``: everything one block needs to be built (widths, heads,
strides, grids, relative-position table lengths, stochastic-depth rate). The reference model and the
optimized model (``fastmvit``) both build their blocks from this plan, so they cannot disagree.

The plan follows the official code (facebookresearch/mvit, ``mvit_model.py``,
``_prepare_mvit_configs``, ``common.round_width``):

- stage ``s`` (0-based) starts at block ``sum(depths[:s])``; at every stage start after the first,
  the width and the heads are multiplied by ``dim_mul`` / ``head_mul`` (2) and q is pooled with
  stride 2;
- the key/value stride starts at ``adaptive_kv_stride`` (4) and is divided (floor, minimum 1) by the
  q stride of every block that has one, *before* that block uses it: 4, 2, 1, 1 by stage;
- with ``dim_mul_in_attention`` the width changes in the first block of a stage (the attention
  widens, the shortcut is ``proj(norm1(x))``); otherwise in the last block of the previous stage
  (the MLP widens, the shortcut is ``proj(norm2(x))``: large).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Sequence

__all__ = ["ARCHS", "ARCH_SETTINGS", "BackboneBlockSpec", "BackboneStageSpec", "BlockSpec",
           "DETECTION_ARCH_SETTINGS", "DETECTION_DEFAULTS", "MViTv2Config", "MViTv2VideoConfig",
           "VIDEO_ARCH_SETTINGS", "as_axes", "backbone_block_specs", "backbone_stage_specs", "block_specs",
           "conv_out_size", "get_config", "get_detection_arch", "get_video_config", "patch_grid",
           "rel_pos_length", "round_width", "video_rel_pos_lengths"]


def as_axes(value: int | Sequence[int], ndim: int, name: str = "value") -> tuple[int, ...]:
    """An int (the same on every axis) or a sequence of ``ndim`` ints, as a tuple of ``ndim`` ints."""
    if isinstance(value, int):
        return (int(value),) * ndim
    out = tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"{name} must be an int or {ndim} ints, got {value!r}")
    return out


@dataclass(frozen=True)
class MViTv2Config:
    """An MViTv2 image architecture (field names follow mmpretrain's ``MViT`` where one exists).

    embed_dims: width C0 of the first stage (the patch embedding's output channels).
    num_heads: heads of the first stage (heads0); the head dim ``embed_dims // num_heads`` stays
        the same in every stage because width and heads both double.
    depths: blocks per stage.
    dim_mul_in_attention: True: the width changes in the attention of a stage's first block;
        False: in the MLP of the previous stage's last block (large).
    with_cls_token: prepend a learned class token; the head reads it instead of the token mean.
    drop_path_rate: stochastic depth of the last block (linear from 0 over the blocks); the value
        recommended for training the arch from scratch.
    """
    embed_dims: int = 96
    num_heads: int = 1
    depths: tuple[int, ...] = (1, 2, 5, 2)
    dim_mul_in_attention: bool = True
    with_cls_token: bool = False
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pool_kernel: tuple[int, int] = (3, 3)
    adaptive_kv_stride: int = 4
    rel_pos_spatial: bool = True
    residual_pooling: bool = True
    drop_path_rate: float = 0.1
    dim_mul: float = 2.0
    head_mul: float = 2.0
    downscale_stride: int = 2
    patch_kernel: int = 7
    patch_stride: int = 4
    patch_padding: int = 3
    norm_eps: float = 1e-6
    ndim: ClassVar[int] = 2          # token grid axes: (H, W)

    def __post_init__(self):
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "pool_kernel", as_axes(self.pool_kernel, self.ndim, "pool_kernel"))
        if len(self.depths) == 0 or min(self.depths) < 1:
            raise ValueError(f"depths must be a non-empty sequence of positive block counts, got {self.depths}")
        if self.embed_dims < 1 or self.num_heads < 1:
            raise ValueError(f"embed_dims ({self.embed_dims}) and num_heads ({self.num_heads}) must be positive")
        if self.embed_dims % self.num_heads:
            # (The official round_width would silently widen block 0 to a multiple of the heads.)
            raise ValueError(f"num_heads ({self.num_heads}) do not divide embed_dims ({self.embed_dims}): "
                             f"heads do not divide the width")
        if min(self.pool_kernel) < 1 or any(k % 2 == 0 for k in self.pool_kernel):
            raise ValueError(f"pool_kernel must be {self.ndim} odd positive sizes, got {self.pool_kernel}")
        if (self.adaptive_kv_stride < 1 or self.downscale_stride < 1
                or min(as_axes(self.patch_stride, self.ndim, "patch_stride")) < 1):
            raise ValueError("adaptive_kv_stride, downscale_stride and patch_stride must be >= 1")

    # Names used by fastmvit.checkpoint (ArchInfo) for the same fields.
    @property
    def embed_dim(self) -> int:
        return self.embed_dims

    @property
    def cls_token(self) -> bool:
        return self.with_cls_token

    @property
    def depth(self) -> int:
        """Total number of blocks."""
        return sum(self.depths)

    def replace(self, **changes) -> "MViTv2Config":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return replace(self, **changes)


ARCH_SETTINGS: dict[str, MViTv2Config] = {
    "tiny": MViTv2Config(96, 1, (1, 2, 5, 2), drop_path_rate=0.1),
    "small": MViTv2Config(96, 1, (1, 2, 11, 2), drop_path_rate=0.1),
    "base": MViTv2Config(96, 1, (2, 3, 16, 3), drop_path_rate=0.3),
    "large": MViTv2Config(144, 2, (2, 6, 36, 4), dim_mul_in_attention=False, drop_path_rate=0.5),
    "small_cls": MViTv2Config(96, 1, (1, 2, 11, 2), with_cls_token=True, drop_path_rate=0.1),
    "base_cls": MViTv2Config(96, 1, (2, 3, 16, 3), with_cls_token=True, drop_path_rate=0.3),
    "large_cls": MViTv2Config(144, 2, (2, 6, 36, 4), with_cls_token=True, drop_path_rate=0.5),
    # huge_cls: no from-scratch recipe published; large's rate as a starting point.
    "huge_cls": MViTv2Config(192, 3, (4, 8, 60, 8), with_cls_token=True, drop_path_rate=0.5),
}
ARCHS = ARCH_SETTINGS  # the name fastmvit.checkpoint looks up


@dataclass(frozen=True)
class MViTv2VideoConfig(MViTv2Config):
    """A video MViTv2 (docs/design.md, "The video model"): the image fields over a (T, H, W) grid.

    The defaults are torchvision's ``mvit_v2_s`` / SlowFast's MViTv2-S 16x4: a class token, 3x3x3
    pooling kernels, a (3, 7, 7) / (2, 4, 4) patch embedding, the key/value stride starting at
    (``adaptive_kv_stride_t``, ``adaptive_kv_stride``, ``adaptive_kv_stride``) = (1, 8, 8).
    temporal_stride: q's temporal stride at each stage start (1 in every public model); the
    spatial one is ``downscale_stride``. head_drop_rate: the head's dropout (0.5).
    """
    depths: tuple[int, ...] = (1, 2, 11, 2)
    with_cls_token: bool = True
    pool_kernel: tuple[int, ...] = (3, 3, 3)
    adaptive_kv_stride: int = 8
    adaptive_kv_stride_t: int = 1
    temporal_stride: int = 1
    drop_path_rate: float = 0.2
    head_drop_rate: float = 0.5
    patch_kernel: tuple[int, ...] = (3, 7, 7)
    patch_stride: tuple[int, ...] = (2, 4, 4)
    patch_padding: tuple[int, ...] = (1, 3, 3)
    ndim: ClassVar[int] = 3          # token grid axes: (T, H, W)

    def __post_init__(self):
        super().__post_init__()
        for name in ("patch_kernel", "patch_stride", "patch_padding"):
            object.__setattr__(self, name, as_axes(getattr(self, name), 3, name))
        if self.adaptive_kv_stride_t < 1 or self.temporal_stride < 1:
            raise ValueError("adaptive_kv_stride_t and temporal_stride must be >= 1")


# SlowFast's MViTv2 video models (configs/Kinetics/MVITv2_{S_16x4,B_32x3,L_40x3_test}); "small" is
# torchvision's mvit_v2_s.
VIDEO_ARCH_SETTINGS: dict[str, MViTv2VideoConfig] = {
    "small": MViTv2VideoConfig(96, 1, (1, 2, 11, 2), drop_path_rate=0.2),
    "base": MViTv2VideoConfig(96, 1, (2, 3, 16, 3), drop_path_rate=0.3),
    "large": MViTv2VideoConfig(144, 2, (2, 6, 36, 4), drop_path_rate=0.75),
}


def get_config(arch: str | MViTv2Config, _settings: dict | None = None, _kind: type = MViTv2Config,
               **overrides) -> MViTv2Config:
    """The config of a public arch name (``"tiny"``, ``"mvitv2_tiny"`` ...) or a given config,
    with ``overrides`` (config field names) applied. Raises ``ValueError`` for an unknown name."""
    settings = ARCH_SETTINGS if _settings is None else _settings
    if isinstance(arch, _kind):
        cfg = arch
    elif isinstance(arch, MViTv2Config):
        want = "a video" if _kind is MViTv2VideoConfig else "an image"
        raise TypeError(f"expected {want} config ({_kind.__name__}), got {type(arch).__name__}")
    elif isinstance(arch, str):
        name = arch.lower().removeprefix("mvitv2_").removeprefix("mvitv2-").replace("-", "_")
        if name not in settings:
            raise ValueError(f"unknown MViTv2 arch {arch!r}; choose one of {sorted(settings)} "
                             f"or pass an {_kind.__name__}")
        cfg = settings[name]
    else:
        raise TypeError(f"arch must be an arch name or an {_kind.__name__}, got {type(arch).__name__}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, **overrides) if overrides else cfg


def get_video_config(arch: str | MViTv2VideoConfig, **overrides) -> MViTv2VideoConfig:
    """``get_config`` for the video archs (``"small"``, ``"base"``, ``"large"``, or
    ``"mvit_v2_s"``, torchvision's name for small)."""
    if isinstance(arch, str) and arch.lower() in ("mvit_v2_s", "mvit-v2-s"):
        arch = "small"
    return get_config(arch, VIDEO_ARCH_SETTINGS, MViTv2VideoConfig, **overrides)


def round_width(width: int, multiplier: float, min_width: int = 1, divisor: int = 1) -> int:
    """Multiply a width and round it to a multiple of ``divisor`` (official ``common.round_width``).

    For the public archs this is an exact doubling."""
    if not multiplier:
        return width
    width = width * multiplier
    min_width = min_width or divisor
    width_out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if width_out < 0.9 * width:
        width_out += divisor
    return int(width_out)


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution / pooling along one axis (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def patch_grid(config: MViTv2Config, img_size: Sequence[int]) -> tuple[int, ...]:
    """Token grid after the patch embedding: (H, W) of an (H_img, W_img) image, or (T, H, W) of a
    (frames, H_img, W_img) clip with a video config."""
    n = config.ndim
    return tuple(conv_out_size(s, k, st, p) for s, k, st, p in zip(
        img_size, as_axes(config.patch_kernel, n), as_axes(config.patch_stride, n), as_axes(config.patch_padding, n)))


def rel_pos_length(q_size: int, k_size: int) -> int:
    """Length of a relative-position table along one axis: ``2 * max(q_size, k_size) - 1``."""
    return 2 * max(q_size, k_size) - 1


@dataclass(frozen=True)
class BlockSpec:
    """One block of the plan. Widths are channels; grids are (H, W) token grids at the
    construction ``img_size`` (other input sizes change the grids, not the parameters).

    dim: input width; dim_out: output width; dim_att: attention width (= dim_out with dim change in
    attention, else dim); mlp_hidden: hidden width of the MLP; head_dim = dim_att // num_heads.
    stride_q / stride_kv: pooling strides of q and of k, v; pool_kernel: the conv pooling kernel.
    input_size: grid entering the block; q_size: grid after q pooling (= the block's output grid);
    kv_size: grid after k/v pooling. rel_pos_len: (len_h, len_w) of the tables rel_pos_h / rel_pos_w.
    Video plans hold 3-tuples over (t, h, w) in every grid, stride and kernel field, and
    rel_pos_len = (len_t, len_h, len_w).
    dim_change: None, "attention" or "mlp" (where ``proj`` sits). drop_path: stochastic depth rate.
    """
    index: int
    stage: int
    dim: int
    dim_out: int
    dim_att: int
    mlp_hidden: int
    num_heads: int
    head_dim: int
    stride_q: tuple[int, int]
    stride_kv: tuple[int, int]
    pool_kernel: tuple[int, int]
    input_size: tuple[int, int]
    q_size: tuple[int, int]
    kv_size: tuple[int, int]
    rel_pos_len: tuple[int, int]
    dim_change: str | None
    drop_path: float

    @property
    def pool_padding(self) -> tuple[int, int]:
        return tuple(k // 2 for k in self.pool_kernel)


def block_specs(config: MViTv2Config, img_size: int | Sequence[int] = 224,
                drop_path_rate: float | None = None) -> list[BlockSpec]:
    """The per-block plan of ``config`` for ``img_size`` input: an int or (H, W) for an image
    config, (frames, H, W) for a video config (``MViTv2VideoConfig``).

    ``drop_path_rate`` overrides ``config.drop_path_rate``. Raises ``ValueError`` when the heads do
    not divide a block's attention width or the input is smaller than the patch stride.
    """
    n = config.ndim
    video = n == 3
    if video:
        size_in = as_axes(img_size, 3, "video input size (frames, H, W)")
    else:
        size_in = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    patch_stride = as_axes(config.patch_stride, n)
    if len(size_in) != n or any(s < st for s, st in zip(size_in, patch_stride)):
        raise ValueError(f"input size {size_in} is smaller than the patch stride {patch_stride}")
    depth = config.depth
    rate = config.drop_path_rate if drop_path_rate is None else drop_path_rate
    # Stochastic depth grows linearly over the blocks (official: torch.linspace(0, rate, depth)).
    dpr = [rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
    starts = {sum(config.depths[:s]) for s in range(1, len(config.depths))}
    stage_of = [s for s, d in enumerate(config.depths) for _ in range(d)]
    # dim_mul / head_mul over depth + 1 positions, as in the official _prepare_mvit_configs.
    dim_mul = [config.dim_mul if i in starts else 1.0 for i in range(depth + 1)]
    head_mul = [config.head_mul if i in starts else 1.0 for i in range(depth + 1)]
    kernel = config.pool_kernel
    pad = tuple(k // 2 for k in kernel)
    # Strides per axis: a stage start strides q by downscale_stride on the spatial axes (and by
    # temporal_stride on t); the key/value stride starts adaptive and is divided by q's stride.
    down = ((config.temporal_stride,) if video else ()) + (config.downscale_stride,) * 2
    kv_stride = ((config.adaptive_kv_stride_t,) if video else ()) + (config.adaptive_kv_stride,) * 2

    specs = []
    dim, heads = config.embed_dims, config.num_heads
    size = patch_grid(config, size_in)
    for i in range(depth):
        stride_q = down if i in starts else (1,) * n
        kv_stride = tuple(max(k // sq, 1) for k, sq in zip(kv_stride, stride_q))
        heads = round_width(heads, head_mul[i])
        if config.dim_mul_in_attention:
            dim_out = round_width(dim, dim_mul[i], divisor=round_width(heads, head_mul[i]))
        else:
            dim_out = round_width(dim, dim_mul[i + 1], divisor=round_width(heads, head_mul[i + 1]))
        dim_att = dim_out if config.dim_mul_in_attention else dim
        if dim_att % heads:
            raise ValueError(f"block {i}: {heads} heads do not divide the attention width {dim_att} "
                             f"(embed_dims {config.embed_dims}, num_heads {config.num_heads})")
        q_size = tuple(conv_out_size(a, k, st, p) for a, k, st, p in zip(size, kernel, stride_q, pad))
        kv_size = tuple(conv_out_size(a, k, st, p) for a, k, st, p in zip(size, kernel, kv_stride, pad))
        if video:
            rel_len = video_rel_pos_lengths(size, stride_q, kv_stride)
        else:
            rel_len = tuple(rel_pos_length(a, b) for a, b in zip(q_size, kv_size))
        specs.append(BlockSpec(
            index=i, stage=stage_of[i], dim=dim, dim_out=dim_out, dim_att=dim_att,
            mlp_hidden=int(dim_att * config.mlp_ratio), num_heads=heads, head_dim=dim_att // heads,
            stride_q=stride_q, stride_kv=kv_stride, pool_kernel=kernel, input_size=size,
            q_size=q_size, kv_size=kv_size, rel_pos_len=rel_len,
            dim_change=None if dim == dim_out else ("attention" if config.dim_mul_in_attention else "mlp"),
            drop_path=dpr[i]))
        size, dim = q_size, dim_out
    return specs


def video_rel_pos_lengths(input_size: Sequence[int], stride_q: Sequence[int],
                          stride_kv: Sequence[int]) -> tuple[int, int, int]:
    """(len_t, len_h, len_w) of a video block's tables, as torchvision and SlowFast size them:
    ``2 * T_in - 1`` along t; ``2 * max(S // sq, S // skv) - 1`` along h and w, with S the larger
    spatial side of the block's input grid and sq, skv the spatial strides of q and of k, v."""
    t, h, w = input_size
    side = max(h, w)
    spatial = rel_pos_length(side // stride_q[1], side // stride_kv[1])
    return 2 * t - 1, spatial, spatial


# ------------------------------------------------------------------------------------------------
# The detection backbone (detectron2's MViT; docs/design.md, "The detection backbone")
# ------------------------------------------------------------------------------------------------
# arch: (embed_dim, depth, num_heads, last_block_indexes), as in detectron2's projects/MViTv2
# configs (mask_rcnn_mvitv2_t_3x, cascade_mask_rcnn_mvitv2_{s,b}_3x, *_l_in21k_lsj_50ep,
# *_h_in21k_lsj_3x). The blocks are the classifier's of the same name (tiny: 1, 2, 5, 2 per stage);
# large and huge are the class-token ImageNet-21k models (dim change in attention).
DETECTION_ARCH_SETTINGS: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "tiny": (96, 10, 1, (0, 2, 7, 9)),
    "small": (96, 16, 1, (0, 2, 13, 15)),
    "base": (96, 24, 1, (1, 4, 20, 23)),
    "large": (144, 48, 2, (1, 7, 43, 47)),
    "huge": (192, 80, 3, (3, 11, 71, 79)),
}
# detectron2's MViT(...) keyword defaults, used where neither an arch nor a value is given.
DETECTION_DEFAULTS: tuple[int, int, int, tuple[int, ...]] = (96, 16, 1, (0, 2, 11, 15))


def get_detection_arch(arch: str) -> tuple[int, int, int, tuple[int, ...]]:
    """(embed_dim, depth, num_heads, last_block_indexes) of a detection arch name (``"tiny"``,
    ``"mvitv2_tiny"``, ...). Raises ``ValueError`` for an unknown name."""
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a detection arch name or None, got {type(arch).__name__}")
    name = arch.lower().removeprefix("mvitv2_").removeprefix("mvitv2-")
    if name not in DETECTION_ARCH_SETTINGS:
        raise ValueError(f"unknown MViTv2 detection arch {arch!r}; choose one of {sorted(DETECTION_ARCH_SETTINGS)} "
                         f"or give embed_dim, depth, num_heads and last_block_indexes")
    return DETECTION_ARCH_SETTINGS[name]


@dataclass(frozen=True)
class BackboneBlockSpec(BlockSpec):
    """One block of the detection backbone's plan: a ``BlockSpec`` (so ``MultiScaleBlock`` builds
    it) plus the windows.

    window: the block's window size on its input map (detectron2's ``window_size``), 0 for a
    global block; q_window = window // stride_q, kv_window = window // stride_kv: the window sides
    on the pooled q map and on the pooled k, v maps (0: global attention). table_side: the input
    side detectron2 sizes the tables from (``img_size // patch_stride``, floor-halved after each
    stage's first block): rel_pos_len = 2 * max(table_side // sq, table_side // skv) - 1 per axis.
    out_name: ``"scale{stage + 2}"`` on a stage's last block (where detectron2 takes an output),
    else None. ``dim_change`` is "attention" on every stage's first block after the first.
    """
    window: int
    q_window: int
    kv_window: int
    table_side: tuple[int, int]
    out_name: str | None


@dataclass(frozen=True)
class BackboneStageSpec:
    """One output of the detection backbone: ``name`` (``"scale2"`` .. ``"scale5"``), the index of
    the stage's last block, its ``channels`` and ``stride`` (pixels per token: 4, 8, 16, 32)."""
    name: str
    last_block: int
    channels: int
    stride: int


def _check_last_block_indexes(depth: int, last_block_indexes: Sequence[int]) -> tuple[int, ...]:
    lbi = tuple(int(i) for i in last_block_indexes)
    if len(lbi) < 3:
        raise ValueError(f"last_block_indexes needs at least 3 stages (detectron2 reads entries 1 and 2), got {lbi}")
    if any(b <= a for a, b in zip(lbi, lbi[1:])) or lbi[0] < 0:
        raise ValueError(f"last_block_indexes must be increasing block indexes, got {lbi}")
    if lbi[-1] != depth - 1:
        raise ValueError(f"last_block_indexes must end at the last block (depth - 1 = {depth - 1}), got {lbi}")
    return lbi


def backbone_stage_specs(embed_dim: int, last_block_indexes: Sequence[int],
                         patch_stride: int | Sequence[int] = 4) -> list[BackboneStageSpec]:
    """The backbone's outputs, one per stage, as detectron2 records them
    (``_out_feature_channels`` / ``_out_feature_strides``): channels double and the stride
    doubles from ``patch_stride[0]`` at each stage."""
    lbi = tuple(int(i) for i in last_block_indexes)
    stride = as_axes(patch_stride, 2, "patch_stride")[0]
    return [BackboneStageSpec(f"scale{s + 2}", last, embed_dim * 2 ** s, stride * 2 ** s)
            for s, last in enumerate(lbi)]


def backbone_block_specs(embed_dim: int = 96, depth: int = 16, num_heads: int = 1,
                         last_block_indexes: Sequence[int] = (0, 2, 11, 15), *,
                         img_size: int | Sequence[int] = 224, patch_kernel: int | Sequence[int] = (7, 7),
                         patch_stride: int | Sequence[int] = (4, 4), patch_padding: int | Sequence[int] = (3, 3),
                         qkv_pool_kernel: int | Sequence[int] = (3, 3), adaptive_kv_stride: int = 4,
                         adaptive_window_size: int = 56, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                         use_rel_pos: bool = True) -> list[BackboneBlockSpec]:
    """The per-block plan of detectron2's MViT backbone, exactly as its ``MViT.__init__`` loop
    computes it (defaults: detectron2's keyword defaults).

    For block i, with lbi = last_block_indexes:

    - q stride 2 where i - 1 is in lbi (the first block of stages 3, 4, 5), else 1;
    - the key/value stride starts at ``adaptive_kv_stride``; block lbi[1] and block lbi[2] use
      twice the running value; after each stage's last block the running value halves (floor,
      minimum 1), and channels and heads double (the width changes in the attention of the next
      block, the next stage's first);
    - the window starts at ``adaptive_window_size``; the blocks lbi[1:] are global (window 0);
      the window halves (floor) after each block i with i - 1 in lbi (a stage's first block after
      the first stage), so a stage's first, q-strided block still uses the previous size;
    - the tables' side starts at ``img_size // patch_stride`` and halves (floor) with the window;
    - stochastic depth ``torch.linspace(0, drop_path_rate, depth)`` (float32 values).

    ``input_size`` / ``q_size`` / ``kv_size`` are the real token grids at ``img_size`` (the
    convolution arithmetic); the tables follow detectron2's floor-halved ``table_side`` instead.
    Raises ``ValueError`` for a plan detectron2 could not build: heads that do not divide the
    width, bad ``last_block_indexes``, a window smaller than a block's stride, or (with
    ``use_rel_pos``) a non-square token grid at ``img_size`` (detectron2 asserts a square one).
    """
    import torch  # detectron2 draws the rates with torch.linspace: the same float32 values

    depth, embed_dim, num_heads = int(depth), int(embed_dim), int(num_heads)
    if depth < 1 or embed_dim < 1 or num_heads < 1:
        raise ValueError(f"embed_dim ({embed_dim}), depth ({depth}) and num_heads ({num_heads}) must be positive")
    if embed_dim % num_heads:
        raise ValueError(f"num_heads ({num_heads}) do not divide embed_dim ({embed_dim})")
    lbi = _check_last_block_indexes(depth, last_block_indexes)
    if adaptive_kv_stride < 1 or adaptive_window_size < 0:
        raise ValueError(f"adaptive_kv_stride must be >= 1 and adaptive_window_size >= 0, got "
                         f"{adaptive_kv_stride}, {adaptive_window_size}")
    img = as_axes(img_size, 2, "img_size")
    kernel_p, stride_p, pad_p = (as_axes(v, 2, name) for v, name in (
        (patch_kernel, "patch_kernel"), (patch_stride, "patch_stride"), (patch_padding, "patch_padding")))
    pool_kernel = as_axes(qkv_pool_kernel, 2, "qkv_pool_kernel")
    if min(pool_kernel) < 1 or any(k % 2 == 0 for k in pool_kernel):
        raise ValueError(f"qkv_pool_kernel must be 2 odd positive sizes, got {pool_kernel}")
    if min(stride_p) < 1 or any(s < st for s, st in zip(img, stride_p)):
        raise ValueError(f"img_size {img} is smaller than the patch stride {stride_p}")
    table_side = tuple(s // st for s, st in zip(img, stride_p))
    if use_rel_pos and table_side[0] != table_side[1]:
        raise ValueError(f"relative positions need a square token grid at img_size (detectron2 asserts it): "
                         f"img_size {img} with patch stride {stride_p} gives {table_side[0]}x{table_side[1]}; "
                         f"give a square img_size (any input size runs: the tables are resized)")
    grid = tuple(conv_out_size(s, k, st, p) for s, k, st, p in zip(img, kernel_p, stride_p, pad_p))
    pad = tuple(k // 2 for k in pool_kernel)
    dpr = [float(r) for r in torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()]

    specs: list[BackboneBlockSpec] = []
    dim, dim_out, heads = embed_dim, embed_dim, num_heads
    stride_kv, window, stage = adaptive_kv_stride, adaptive_window_size, 0
    for i in range(depth):
        skv = stride_kv * 2 if i in (lbi[1], lbi[2]) else stride_kv
        sq = 2 if i - 1 in lbi else 1
        win = 0 if i in lbi[1:] else window
        q_win, kv_win = (win // sq, win // skv) if win else (0, 0)
        if win and (q_win < 1 or kv_win < 1):
            raise ValueError(f"block {i}: window {win} is smaller than its strides (q {sq}, kv {skv}); "
                             f"raise adaptive_window_size")
        q_size = tuple(conv_out_size(a, k, sq, p) for a, k, p in zip(grid, pool_kernel, pad))
        kv_size = tuple(conv_out_size(a, k, skv, p) for a, k, p in zip(grid, pool_kernel, pad))
        rel_len = tuple(rel_pos_length(s // sq, s // skv) for s in table_side)
        specs.append(BackboneBlockSpec(
            index=i, stage=stage, dim=dim, dim_out=dim_out, dim_att=dim_out,
            mlp_hidden=int(dim_out * mlp_ratio), num_heads=heads, head_dim=dim_out // heads,
            stride_q=(sq, sq), stride_kv=(skv, skv), pool_kernel=pool_kernel, input_size=grid,
            q_size=q_size, kv_size=kv_size, rel_pos_len=rel_len,
            dim_change="attention" if dim != dim_out else None, drop_path=dpr[i],
            window=win, q_window=q_win, kv_window=kv_win, table_side=table_side,
            out_name=f"scale{stage + 2}" if i in lbi else None))
        dim, grid = dim_out, q_size
        if i in lbi:
            dim_out, heads = dim_out * 2, heads * 2
            stride_kv = max(stride_kv // 2, 1)
            stage += 1
        if i - 1 in lbi:
            window = window // 2
            table_side = tuple(s // 2 for s in table_side)
    return specs
