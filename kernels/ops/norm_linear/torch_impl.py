"""The plain torch twin of `norm_linear`: the eager model's ops, the readable math."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def norm_linear_torch(x, norm_weight, norm_bias, weight, bias=None, eps: float = 1e-6) -> torch.Tensor:
    """``F.linear(F.layer_norm(x, ...), weight, bias)`` on checked arguments (autocast applies as
    it does to those two ops)."""
    return F.linear(F.layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, eps), weight, bias)
