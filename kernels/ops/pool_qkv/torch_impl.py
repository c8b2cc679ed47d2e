"""The plain torch twin of `pool_qkv`: conv2d (conv3d for video) + layer_norm per q, k, v, the readable math."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_qkv_torch(qkv, hw, num_heads, pool_weights, norm_weights, norm_biases, strides, sp, eps):
    """The plain torch path (conv2d or conv3d + layer_norm per t), on checked arguments: the
    readable math. hw: (H, W) or (T, H, W)."""
    B, N, C = qkv.shape
    n = len(hw)
    conv = F.conv2d if n == 2 else F.conv3d
    D = C // (3 * num_heads)
    qkv = qkv.reshape(B, N, 3, num_heads, D).permute(2, 0, 3, 1, 4)      # (3, B, heads, N, D)
    outs = []
    for x, w, g, b, stride in zip(qkv, pool_weights, norm_weights, norm_biases, strides[:1] + strides[1:] * 2):
        cls, grid = x[:, :, :sp], x[:, :, sp:]
        grid = grid.reshape(B * num_heads, *hw, D).movedim(-1, 1)          # (B * heads, D, *grid)
        grid = conv(grid, w.to(x.dtype), stride=stride, padding=tuple(k // 2 for k in w.shape[2:]), groups=D)
        grid = grid.flatten(2).transpose(1, 2).reshape(B, num_heads, -1, D)  # (B, heads, pooled rows, D)
        x = torch.cat([cls, grid], dim=2)
        outs.append(F.layer_norm(x, (D,), g.to(x.dtype), b.to(x.dtype), eps))
    return tuple(outs)
