"""The plain torch twin of `pool_qkv`: conv2d + layer_norm per q, k, v, the readable math."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_qkv_torch(qkv, hw, num_heads, pool_weights, norm_weights, norm_biases, strides, sp, eps):
    """The plain torch path (conv2d + layer_norm per t), on checked arguments: the readable math."""
    B, N, C = qkv.shape
    H, W = hw
    D = C // (3 * num_heads)
    qkv = qkv.reshape(B, N, 3, num_heads, D).permute(2, 0, 3, 1, 4)      # (3, B, heads, N, D)
    outs = []
    for x, w, g, b, stride in zip(qkv, pool_weights, norm_weights, norm_biases, strides[:1] + strides[1:] * 2):
        cls, grid = x[:, :, :sp], x[:, :, sp:]
        grid = grid.reshape(B * num_heads, H, W, D).permute(0, 3, 1, 2)     # (B * heads, D, H, W)
        kh, kw = w.shape[-2:]
        grid = F.conv2d(grid, w.to(x.dtype), stride=stride, padding=(kh // 2, kw // 2), groups=D)
        grid = grid.flatten(2).transpose(1, 2).reshape(B, num_heads, -1, D)  # (B, heads, oh * ow, D)
        x = torch.cat([cls, grid], dim=2)
        outs.append(F.layer_norm(x, (D,), g.to(x.dtype), b.to(x.dtype), eps))
    return tuple(outs)
