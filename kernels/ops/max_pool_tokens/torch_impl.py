"""The plain torch twin of `max_pool_tokens`: max_pool2d (3d) on the grid, the class token put back."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def max_pool_tokens_torch(x, hw, kernel, stride, sp):
    """The plain torch path on checked arguments: F.max_pool2d (max_pool3d for a (T, H, W) grid) on
    the channels-last grid view, and ``cat`` for the class token (the readable math, and the eager
    baseline)."""
    B, N, C = x.shape
    pool = F.max_pool2d if len(hw) == 2 else F.max_pool3d
    grid = x[:, sp:].reshape(B, *hw, C).movedim(-1, 1)                     # (B, C, *grid), channels last
    grid = pool(grid, kernel, stride, padding=tuple(k // 2 for k in kernel))
    grid = grid.flatten(2).transpose(1, 2)                                  # (B, pooled rows, C)
    return torch.cat((x[:, :sp], grid), dim=1) if sp else grid.contiguous()
