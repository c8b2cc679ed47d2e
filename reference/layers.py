"""The pieces of an MViTv2 block, in plain PyTorch (docs/design.md, sections 1-2).

Module-level functions hold the math the optimized model and its tests reuse: pooling a tensor of
tokens (``pool_tokens``), the relative-position index (``rel_pos_index``), the table resize
(``resize_rel_pos``), the decomposed relative-position bias (``add_decomposed_rel_pos``), and the
whole attention core (``pooling_attention``; ``window_attention`` for the detection backbone's
windows). The modules (``PatchEmbed``, ``Mlp``, ``MultiScaleAttention``, ``MultiScaleBlock``)
create their parameters in ``__init__`` under the official key names, so a subclass can override
``forward`` alone.

Notation: B batch, n heads, N tokens (1 + H*W with a class token, else H*W), hd head dim,
``sp`` = 1 with a class token else 0 (where the grid tokens start).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import BlockSpec, rel_pos_length

__all__ = ["DropPath", "Mlp", "MultiScaleAttention", "MultiScaleBlock", "PatchEmbed",
           "add_decomposed_rel_pos", "drop_path", "drop_path_mask", "get_rel_pos", "pool_tokens", "pooling_attention",
           "rel_pos_index", "resize_rel_pos", "window_attention", "window_grid", "window_partition",
           "window_unpartition"]


# ------------------------------------------------------------------------------------------------
# Functions
# ------------------------------------------------------------------------------------------------
def pool_tokens(x: torch.Tensor, pool: nn.Module | None, hw_shape: Sequence[int], has_cls_token: bool,
                norm: nn.Module | None = None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pool the grid tokens of ``x`` with ``pool`` (a conv or max pool on NCHW, or NCTHW), then ``norm``.

    x: (B, n, N, C) per-head tokens, or (B, N, C). hw_shape: the grid, (H, W) or (T, H, W), its
    product = N - sp. The class token (row 0 when ``has_cls_token``) is split off, the grid pooled
    with every (batch, head) as its own image (or clip) of C channels, the token put back in front,
    and then ``norm`` (LayerNorm over C) is applied to all rows, the class token included (official
    ``attention_pool``). Returns the pooled tokens (B, n, N', C) or (B, N', C) and the new grid.
    With ``pool`` None, ``x`` and ``hw_shape`` come back unchanged (and ``norm`` is not applied).
    """
    if pool is None:
        return x, tuple(hw_shape)
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(1)                                       # (B, 1, N, C)
    elif x.dim() != 4:
        raise ValueError(f"pool_tokens expects (B, N, C) or (B, heads, N, C) tokens, got shape {tuple(x.shape)}")
    grid_shape = tuple(hw_shape)
    sp = 1 if has_cls_token else 0
    B, n, N, C = x.shape
    if N - sp != math.prod(grid_shape):
        raise ValueError(f"{N} tokens do not fit the grid {'x'.join(map(str, grid_shape))}"
                         + (" plus a class token" if sp else ""))
    d = len(grid_shape)
    cls_tok, grid = x[:, :, :sp], x[:, :, sp:]
    grid = grid.reshape(B * n, *grid_shape, C).permute(0, d + 1, *range(1, d + 1))  # (B*n, C, *grid)
    grid = pool(grid)                                            # (B*n, C, *grid')
    new_shape = tuple(grid.shape[2:])
    grid = grid.reshape(B, n, C, math.prod(new_shape)).transpose(2, 3)  # (B, n, N' - sp, C)
    x = torch.cat((cls_tok, grid), dim=2)
    if norm is not None:
        x = norm(x)
    return (x.squeeze(1) if squeeze else x), new_shape


def rel_pos_index(q_size: int, k_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Index into a relative-position table for a q axis of ``q_size`` and a k axis of ``k_size``.

    Returns a (q_size, k_size) int64 tensor with
    ``dist[i, j] = trunc(i * q_ratio - j * k_ratio + (k_size - 1) * k_ratio)``,
    ``q_ratio = max(k_size / q_size, 1)``, ``k_ratio = max(q_size / k_size, 1)``: positions are
    measured on the finer of the two grids. Computed in float32 exactly as the official
    ``cal_rel_pos_spatial`` does (same operations, same order), so non-integer ratios truncate to
    the same indices. Values lie in [0, 2 * max(q_size, k_size) - 2].
    """
    if q_size < 1 or k_size < 1:
        raise ValueError(f"rel_pos_index: sizes must be positive, got q {q_size}, k {k_size}")
    q_ratio = max(k_size / q_size, 1.0)
    k_ratio = max(q_size / k_size, 1.0)
    dist = (torch.arange(q_size, dtype=torch.float32)[:, None] * q_ratio
            - torch.arange(k_size, dtype=torch.float32)[None, :] * k_ratio)
    dist += (k_size - 1) * k_ratio
    return dist.long().to(device) if device is not None else dist.long()


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Resize a (L, hd) relative-position table to (length, hd).

    1-D linear interpolation along the first axis, align_corners False (as mmpretrain and
    detectron2 do at run time); a table already of ``length`` comes back as is. The result keeps
    the table's dtype; float16 / bfloat16 tables are interpolated in float32 and rounded once.
    """
    if table.dim() != 2:
        raise ValueError(f"resize_rel_pos expects a (L, head_dim) table, got shape {tuple(table.shape)}")
    if length < 1:
        raise ValueError(f"resize_rel_pos: length must be positive, got {length}")
    if table.shape[0] == length:
        return table
    work = table.float() if table.dtype in (torch.float16, torch.bfloat16) else table
    resized = F.interpolate(work.t().unsqueeze(0), size=length, mode="linear", align_corners=False)  # (1, hd, length)
    return resized.squeeze(0).t().to(table.dtype)


def get_rel_pos(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """The (q_size, k_size, hd) relative-position embeddings of one axis: the table resized to
    ``2 * max(q_size, k_size) - 1`` when its length differs, then indexed by ``rel_pos_index``."""
    table = resize_rel_pos(table, rel_pos_length(q_size, k_size))
    return table[rel_pos_index(q_size, k_size, device=table.device)]


def add_decomposed_rel_pos(attn: torch.Tensor, q: torch.Tensor, rel_pos_h: torch.Tensor,
                           rel_pos_w: torch.Tensor, q_shape: Sequence[int], k_shape: Sequence[int],
                           has_cls_token: bool) -> torch.Tensor:
    """Add the decomposed relative-position bias to the grid-by-grid part of the attention logits.

    attn: (B, n, Nq, Nk) logits; q: (B, n, Nq, hd) pooled, normed, UNSCALED queries; tables:
    (Lh, hd) and (Lw, hd); q_shape (qh, qw), k_shape (kh, kw). For grid query (y, x) and key (j, l):
    ``bias = q[y, x] . Rh[y, j] + q[y, x] . Rw[x, l]``. The class-token row and column get nothing.
    Returns a new tensor (B, n, Nq, Nk). (The image case of ``add_decomposed_rel_pos_nd``.)
    """
    return add_decomposed_rel_pos_nd(attn, q, (rel_pos_h, rel_pos_w), q_shape, k_shape, has_cls_token)


def add_decomposed_rel_pos_nd(attn: torch.Tensor, q: torch.Tensor, tables: Sequence[torch.Tensor],
                              q_shape: Sequence[int], k_shape: Sequence[int], has_cls_token: bool) -> torch.Tensor:
    """The decomposed relative-position bias over a grid of any number of axes: (h, w) for images,
    (t, h, w) for video, one table per axis in that order.

    For grid query p = (p_1, ..., p_d) and key r = (r_1, ..., r_d):
    ``bias[p, r] = sum over axes a of q[p] . R_a[p_a, r_a]``, with R_a the axis's table resized to
    ``2 * max(q_a, k_a) - 1`` where needed and indexed by ``rel_pos_index(q_a, k_a)``. attn:
    (B, n, Nq, Nk); q: (B, n, Nq, hd) pooled, normed, unscaled. The class-token row and column get
    nothing. Returns a new tensor (B, n, Nq, Nk).
    """
    if not (len(tables) == len(q_shape) == len(k_shape)):
        raise ValueError(f"add_decomposed_rel_pos_nd: {len(tables)} tables for a {len(q_shape)}-axis q grid "
                         f"and a {len(k_shape)}-axis k grid")
    sp = 1 if has_cls_token else 0
    B, n, _, hd = q.shape
    axes = "tyx"[-len(q_shape):] if len(q_shape) <= 3 else None
    if axes is None:
        raise ValueError(f"add_decomposed_rel_pos_nd: grids of 1 to 3 axes, got {len(q_shape)}")
    r_q = q[:, :, sp:].reshape(B, n, *q_shape, hd)
    bias = None
    for a, (table, qa, ka) in enumerate(zip(tables, q_shape, k_shape)):
        R = get_rel_pos(table, qa, ka)                                      # (q_a, k_a, hd)
        rel = torch.einsum(f"bn{axes}c,{axes[a]}kc->bn{axes}k", r_q, R)    # (B, n, *q_shape, k_a)
        term = rel.reshape(B, n, *q_shape, *[ka if i == a else 1 for i in range(len(k_shape))])
        bias = term if bias is None else bias + term                        # broadcast over the key grid
    bias = bias.reshape(B, n, math.prod(q_shape), math.prod(k_shape))
    return attn + F.pad(bias, (sp, 0, sp, 0))                    # zero row/column for the class token


def pooling_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_shape: Sequence[int],
                      k_shape: Sequence[int], rel_pos_h: torch.Tensor | None, rel_pos_w: torch.Tensor | None,
                      has_cls_token: bool, residual_pooling: bool, rel_pos_t: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of pooled, normed q (B, n, Nq, hd) over k, v (B, n, Nk, hd) -> (B, n, Nq, hd).

    ``softmax(q * hd**-0.5 @ k^T + rel-pos bias) @ v``, plus the residual q on the grid rows (not on
    the class-token row: official convention) when ``residual_pooling``. No rel-pos bias when the
    tables are None. Grids (qh, qw) and (kh, kw), or (qt, qh, qw) and (kt, kh, kw) with the
    temporal table ``rel_pos_t`` (video: three decomposed terms).
    """
    scale = q.shape[-1] ** -0.5
    attn = (q * scale) @ k.transpose(-2, -1)                     # (B, n, Nq, Nk)
    if rel_pos_h is not None:
        tables = (rel_pos_h, rel_pos_w) if rel_pos_t is None else (rel_pos_t, rel_pos_h, rel_pos_w)
        attn = add_decomposed_rel_pos_nd(attn, q, tables, q_shape, k_shape, has_cls_token)
    attn = attn.softmax(dim=-1)
    out = attn @ v                                               # (B, n, Nq, hd)
    if residual_pooling:
        sp = 1 if has_cls_token else 0
        out = out + F.pad(q[:, :, sp:], (0, 0, sp, 0))           # class-token row: + 0
    return out


def _window_pair(window: int | Sequence[int], name: str) -> tuple[int, int]:
    win = (int(window), int(window)) if isinstance(window, int) else tuple(int(w) for w in window)
    if len(win) != 2 or min(win) < 1:
        raise ValueError(f"{name} must be a positive int or (h, w), got {window!r}")
    return win


def window_grid(grid: Sequence[int], window: int | Sequence[int]) -> tuple[int, int]:
    """Windows along (h, w) of a ``grid`` map cut into ``window`` windows, the last ones padded:
    ``(ceil(H / wh), ceil(W / ww))``."""
    wh, ww = _window_pair(window, "window")
    return -(-grid[0] // wh), -(-grid[1] // ww)


def window_partition(x: torch.Tensor, grid: Sequence[int], window: int | Sequence[int]) -> torch.Tensor:
    """Cut per-head tokens of a map into windows, zero-padding the map at the bottom and right.

    x: (B, n, H*W, C) on the (H, W) ``grid``; window: an int (square) or (wh, ww). The map is
    padded with zeros to (nh * wh, nw * ww), ``(nh, nw) = window_grid(grid, window)``, and cut.
    Returns (B * nh * nw, n, wh * ww, C): windows batch-major, then row-major over the map
    (detectron2's order), tokens row-major inside a window.
    """
    B, n, N, C = x.shape
    H, W = grid
    if N != H * W:
        raise ValueError(f"window_partition: {N} tokens do not fit the grid {H}x{W}")
    wh, ww = _window_pair(window, "window")
    nh, nw = window_grid(grid, (wh, ww))
    x = x.reshape(B, n, H, W, C)
    x = F.pad(x, (0, 0, 0, nw * ww - W, 0, nh * wh - H))                     # (B, n, Hp, Wp, C), zeros
    x = x.reshape(B, n, nh, wh, nw, ww, C).permute(0, 2, 4, 1, 3, 5, 6)      # (B, nh, nw, n, wh, ww, C)
    return x.reshape(B * nh * nw, n, wh * ww, C)


def window_unpartition(windows: torch.Tensor, grid: Sequence[int], window: int | Sequence[int]) -> torch.Tensor:
    """Inverse of ``window_partition``: (B * nh * nw, n, wh * ww, C) windows -> (B, n, H*W, C)
    tokens of the (H, W) ``grid`` map, the padded rows dropped."""
    H, W = grid
    wh, ww = _window_pair(window, "window")
    nh, nw = window_grid(grid, (wh, ww))
    Bw, n, _, C = windows.shape
    B = Bw // (nh * nw)
    x = windows.reshape(B, nh, nw, n, wh, ww, C).permute(0, 3, 1, 4, 2, 5, 6)  # (B, n, nh, wh, nw, ww, C)
    x = x.reshape(B, n, nh * wh, nw * ww, C)[:, :, :H, :W]                      # (B, n, H, W, C)
    return x.reshape(B, n, H * W, C)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_shape: Sequence[int],
                     k_shape: Sequence[int], q_window: int | Sequence[int], kv_window: int | Sequence[int],
                     rel_pos_h: torch.Tensor | None, rel_pos_w: torch.Tensor | None,
                     residual_pooling: bool) -> torch.Tensor:
    """Window attention of the detection backbone (detectron2's ``MultiScaleAttention`` with a
    window size; docs/design.md, "The detection backbone") -> (B, n, Nq, hd).

    q: (B, n, Nq, hd) pooled, normed queries on the ``q_shape`` (qh, qw) map; k, v:
    (B, n, Nk, hd) on ``k_shape`` (kh, kw); no class token. q is cut into ``q_window`` windows and
    k, v into ``kv_window`` windows (ints or (h, w)), each map zero-padded at the bottom and right
    to a multiple of its window (``window_partition``); window j of q attends to window j of k, v
    (``pooling_attention`` per window, relative positions window-local: the q and k grids are the
    window sides, the tables resized to ``2 * max - 1`` where their length differs). Padded keys
    are NOT masked: they enter the softmax with logit 0 + their relative-position bias, and value
    0, as detectron2 computes. The padded q rows are dropped, then the residual adds the pooled
    (un-windowed) q when ``residual_pooling``. Raises ``ValueError`` when the q and the k maps
    give a different number of windows.
    """
    wq, wk = _window_pair(q_window, "q_window"), _window_pair(kv_window, "kv_window")
    q_shape, k_shape = tuple(q_shape), tuple(k_shape)
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2]:
        raise ValueError(f"window_attention expects q (B, n, Nq, hd) and k, v (B, n, Nk, hd), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    nq, nk = window_grid(q_shape, wq), window_grid(k_shape, wk)
    if nq != nk:
        raise ValueError(f"window_attention: the q map {q_shape[0]}x{q_shape[1]} in {wq[0]}x{wq[1]} windows gives "
                         f"{nq[0]}x{nq[1]} windows but the k map {k_shape[0]}x{k_shape[1]} in {wk[0]}x{wk[1]} "
                         f"windows gives {nk[0]}x{nk[1]}: the windows do not pair up")
    q_win = window_partition(q, q_shape, wq)                          # (B * nW, n, wqh * wqw, hd)
    k_win = window_partition(k, k_shape, wk)                          # (B * nW, n, wkh * wkw, hd)
    v_win = window_partition(v, k_shape, wk)
    out = pooling_attention(q_win, k_win, v_win, wq, wk, rel_pos_h, rel_pos_w,
                            has_cls_token=False, residual_pooling=False)   # (B * nW, n, wqh * wqw, hd)
    out = window_unpartition(out, q_shape, wq)                        # (B, n, Nq, hd)
    return out + q if residual_pooling else out


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples with probability ``p``, scale the rest by 1 / (1 - p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    return x * drop_path_mask(x, keep) / keep


def drop_path_mask(x: torch.Tensor, keep: float) -> torch.Tensor:
    """The per-sample keep mask of stochastic depth: (B, 1, ..., 1) bernoulli(keep) in x's dtype,
    broadcastable against x (one RNG draw per sample, in this order and shape)."""
    return x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)


# ------------------------------------------------------------------------------------------------
# Modules
# ------------------------------------------------------------------------------------------------
class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchEmbed(nn.Module):
    """Conv2d(in_channels, dim, kernel 7, stride 4, padding 3) with bias, flattened to tokens.

    (B, C_in, H_img, W_img) -> (B, H*W, dim) and the grid (H, W)."""

    def __init__(self, in_channels: int = 3, dim: int = 96, kernel: int = 7, stride: int = 4, padding: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=kernel, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)                                         # (B, dim, H, W)
        hw = tuple(x.shape[-2:])
        return x.flatten(2).transpose(1, 2), hw                  # (B, H*W, dim)


class Mlp(nn.Module):
    """fc1 -> GELU (exact erf) -> fc2: (B, N, in) -> (B, N, out)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MultiScaleAttention(nn.Module):
    """Pooling attention (docs/design.md, "Pooling attention"): (B, N, dim) tokens on an (H, W) grid
    (or a (T, H, W) one) -> (B, N', dim_att).

    Parameters (official names): ``qkv`` Linear(dim, 3 dim_att); ``pool_{q,k,v}`` depthwise
    Conv2d(hd, hd, 3, stride, pad 1, groups hd, no bias), weight (hd, 1, 3, 3) shared by the heads;
    ``norm_{q,k,v}`` LayerNorm(hd); ``rel_pos_{h,w}`` (len_h, hd), (len_w, hd) when ``rel_pos_len``
    is given; ``proj`` Linear(dim_att, dim_att). q, k and v are pooled even with stride 1.
    Video (a 3-axis ``pool_kernel``): Conv3d pools, weight (hd, 1, kt, kh, kw), and a third table
    ``rel_pos_t`` (len_t, hd), with ``rel_pos_len`` = (len_t, len_h, len_w).
    """

    def __init__(self, dim: int, dim_att: int, num_heads: int, *, pool_kernel: Sequence[int] = (3, 3),
                 stride_q: Sequence[int] = (1, 1), stride_kv: Sequence[int] = (1, 1),
                 rel_pos_len: Sequence[int] | None = None, has_cls_token: bool = False,
                 residual_pooling: bool = True, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 rel_pos_zero_init: bool = False):
        super().__init__()
        if dim_att % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the attention width {dim_att}")
        self.num_heads = num_heads
        self.dim_att = dim_att
        self.head_dim = hd = dim_att // num_heads
        self.scale = hd ** -0.5
        self.has_cls_token = has_cls_token
        self.residual_pooling = residual_pooling
        self.stride_q, self.stride_kv = tuple(stride_q), tuple(stride_kv)
        padding = tuple(k // 2 for k in pool_kernel)

        self.qkv = nn.Linear(dim, 3 * dim_att, bias=qkv_bias)
        self.proj = nn.Linear(dim_att, dim_att)

        self.ndim = len(pool_kernel)
        conv_cls = {2: nn.Conv2d, 3: nn.Conv3d}[self.ndim]

        def conv(stride):
            return conv_cls(hd, hd, tuple(pool_kernel), stride=tuple(stride), padding=padding, groups=hd, bias=False)

        self.pool_q, self.pool_k, self.pool_v = conv(stride_q), conv(stride_kv), conv(stride_kv)
        self.norm_q, self.norm_k, self.norm_v = (nn.LayerNorm(hd, eps=norm_eps) for _ in range(3))
        self.rel_pos_spatial = rel_pos_len is not None
        self.rel_pos_t = None
        if self.rel_pos_spatial:
            if len(rel_pos_len) != self.ndim:
                raise ValueError(f"rel_pos_len {tuple(rel_pos_len)}: one table length per grid axis ({self.ndim})")
            len_h, len_w = rel_pos_len[-2:]
            self.rel_pos_h = nn.Parameter(torch.zeros(len_h, hd))
            self.rel_pos_w = nn.Parameter(torch.zeros(len_w, hd))
            if self.ndim == 3:
                self.rel_pos_t = nn.Parameter(torch.zeros(rel_pos_len[0], hd))
            if not rel_pos_zero_init:
                for table in self.rel_pos_tables_nd():
                    nn.init.trunc_normal_(table, std=0.02)
        else:
            self.rel_pos_h = self.rel_pos_w = None

    def rel_pos_tables_nd(self) -> tuple[torch.Tensor, ...]:
        """The tables in grid-axis order: (rel_pos_h, rel_pos_w), or (rel_pos_t, rel_pos_h,
        rel_pos_w) for video; () without relative positions."""
        if not self.rel_pos_spatial:
            return ()
        return (self.rel_pos_h, self.rel_pos_w) if self.rel_pos_t is None else (self.rel_pos_t, self.rel_pos_h, self.rel_pos_w)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, dim) -> q, k, v, each (B, n, N, hd), before pooling."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor, hw_shape: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """x: (B, N, dim) normed tokens on the (H, W) (or (T, H, W)) grid -> (B, Nq, dim_att) and the q grid."""
        if x.dim() != 3 or x.shape[-1] != self.qkv.in_features:
            raise ValueError(f"MultiScaleAttention expects tokens (B, N, {self.qkv.in_features}), "
                             f"got shape {tuple(x.shape)}")
        B = x.shape[0]
        q, k, v = self.project_qkv(x)                                                # (B, n, N, hd)
        q, q_shape = pool_tokens(q, self.pool_q, hw_shape, self.has_cls_token, self.norm_q)  # (B, n, Nq, hd)
        k, k_shape = pool_tokens(k, self.pool_k, hw_shape, self.has_cls_token, self.norm_k)  # (B, n, Nk, hd)
        v, _ = pool_tokens(v, self.pool_v, hw_shape, self.has_cls_token, self.norm_v)
        out = pooling_attention(q, k, v, q_shape, k_shape, self.rel_pos_h, self.rel_pos_w,
                                self.has_cls_token, self.residual_pooling, self.rel_pos_t)  # (B, n, Nq, hd)
        out = out.transpose(1, 2).reshape(B, -1, self.dim_att)                       # (B, Nq, dim_att)
        return self.proj(out), q_shape


class MultiScaleBlock(nn.Module):
    """One MViTv2 block (docs/design.md, "The image model"), built from a ``BlockSpec``.

    Parameters (official names): ``norm1`` LayerNorm(dim), ``attn``, ``norm2`` LayerNorm(dim_att),
    ``mlp`` (fc1, fc2), ``proj`` Linear(dim, dim_out) on dim-change blocks only. The shortcut is
    max-pooled (kernel s + 1, stride s, padding (s + 1) // 2; the class token bypasses it) where
    q is strided. ``attention_cls`` is the hook a subclass overrides to swap the attention, and
    ``attention_kwargs(spec)`` the extra keyword arguments it is built with.
    """
    attention_cls = MultiScaleAttention

    def __init__(self, spec: BlockSpec, *, has_cls_token: bool = False, qkv_bias: bool = True,
                 rel_pos_spatial: bool = True, residual_pooling: bool = True, norm_eps: float = 1e-6,
                 rel_pos_zero_init: bool = False):
        super().__init__()
        self.spec = spec
        self.dim, self.dim_out, self.dim_att = spec.dim, spec.dim_out, spec.dim_att
        self.dim_change = spec.dim_change
        self.has_cls_token = has_cls_token
        self.norm1 = nn.LayerNorm(spec.dim, eps=norm_eps)
        self.attn = self.attention_cls(
            spec.dim, spec.dim_att, spec.num_heads, pool_kernel=spec.pool_kernel, stride_q=spec.stride_q,
            stride_kv=spec.stride_kv, rel_pos_len=spec.rel_pos_len if rel_pos_spatial else None,
            has_cls_token=has_cls_token, residual_pooling=residual_pooling, qkv_bias=qkv_bias,
            norm_eps=norm_eps, rel_pos_zero_init=rel_pos_zero_init, **self.attention_kwargs(spec))
        self.drop_path = DropPath(spec.drop_path) if spec.drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(spec.dim_att, eps=norm_eps)
        self.mlp = Mlp(spec.dim_att, spec.mlp_hidden, spec.dim_out)
        if spec.dim != spec.dim_out:
            self.proj = nn.Linear(spec.dim, spec.dim_out)
        if max(spec.stride_q) > 1:
            kernel = tuple(s + 1 if s > 1 else s for s in spec.stride_q)
            pool_cls = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[len(spec.stride_q)]
            self.pool_skip = pool_cls(kernel, spec.stride_q, tuple(k // 2 for k in kernel))
        else:
            self.pool_skip = None

    def attention_kwargs(self, spec: BlockSpec) -> dict:
        """Extra keyword arguments for ``attention_cls`` (the hook a subclass overrides to pass
        what its attention needs, e.g. the detection backbone's windows); none here."""
        return {}

    def forward(self, x: torch.Tensor, hw_shape: Sequence[int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """x: (B, N, dim) on the (H, W) grid -> (B, N', dim_out) on the q grid (H', W')."""
        x_norm = self.norm1(x)
        x_attn, hw_new = self.attn(x_norm, hw_shape)                                   # (B, N', dim_att)
        if self.dim_change == "attention":
            x = self.proj(x_norm)                                                      # proj on the NORMED input
        x_res, _ = pool_tokens(x, self.pool_skip, hw_shape, self.has_cls_token)
        x = x_res + self.drop_path(x_attn)
        x_norm = self.norm2(x)
        x_mlp = self.mlp(x_norm)
        if self.dim_change == "mlp":
            x = self.proj(x_norm)
        return x + self.drop_path(x_mlp), hw_new
