"""The plain torch twin of `gelu_linear`: the eager model's ops, the readable math."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gelu_linear_torch(h, weight, bias=None, residual=None, sample_scale=None, gelu: bool = True) -> torch.Tensor:
    """The plain torch path (the eager model's ops), on checked arguments: the readable math."""
    out = F.linear(F.gelu(h) if gelu else h, weight.to(h.dtype), None if bias is None else bias.to(h.dtype))
    if residual is None:
        return out
    if sample_scale is None:
        return residual + out
    if sample_scale.dtype == out.dtype:
        return torch.addcmul(residual, out, sample_scale.view(-1, 1, 1))
    # A float32 scale with half h: multiply in float32, round once (1 / 0.9 is not a bf16 number,
    # so casting the scale first would bias every kept sample by up to 0.4%).
    return residual + (out * sample_scale.view(-1, 1, 1)).to(out.dtype)
