"""The plain torch twin of `max_pool_tokens`: max_pool2d on the grid, the class token put back."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def max_pool_tokens_torch(x, hw, kernel, stride, sp):
    """The plain torch path on checked arguments: F.max_pool2d on the channels-last grid view, and
    ``cat`` for the class token (the readable math, and the eager baseline)."""
    B, N, C = x.shape
    H, W = hw
    grid = x[:, sp:].reshape(B, H, W, C).permute(0, 3, 1, 2)               # (B, C, H, W), channels last
    grid = F.max_pool2d(grid, kernel, stride, padding=(kernel[0] // 2, kernel[1] // 2))
    grid = grid.flatten(2).transpose(1, 2)                                  # (B, H' * W', C)
    return torch.cat((x[:, :sp], grid), dim=1) if sp else grid.contiguous()
