"""Multiply-accumulate count of a model's forward pass, in fvcore's convention.

fvcore's ``FlopCountAnalysis`` (what the MViTv2 paper, the official README and docs/design.md, "The image model"
report) counts one per multiply-add of convolutions (depthwise included: output elements x
in_channels / groups x kernel area), linears and matrix products (``@``, ``bmm``, einsum), and,
by default, the normalisation layers: LayerNorm and GroupNorm 5 per input element with an affine
(4 without), BatchNorm in eval mode 2 (1). Elementwise ops, softmax, pooling and biases are free.

Counting the norms matters for the published numbers: without them MViTv2-T is 4.677 G, with them
4.704 G (the README's 4.70); tests/test_reference.py checks all four public sizes.

Implementation: ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add for the
matmuls and convolutions) plus formulas for the norms, halved.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs"]

aten = torch.ops.aten


def _norm_flops(affine_elems: int):
    """A FlopCounterMode formula: 2 x (elements x per_element) so that halving gives fvcore's."""
    def formula(input_shape, *args, out_shape=None, **kwargs) -> int:
        weight = args[affine_elems] if len(args) > affine_elems else kwargs.get("weight")
        per_element = 5 if weight is not None else 4
        return 2 * math.prod(input_shape) * per_element
    return formula


def _batch_norm_eval_flops(input_shape, weight=None, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(input_shape) * (2 if weight is not None else 1)


# Argument positions of the weight: native_layer_norm(input, normalized_shape, weight, bias, eps);
# native_group_norm(input, weight, bias, N, C, HxW, group, eps).
_NORM_FORMULAS = {
    aten.native_layer_norm: _norm_flops(1),
    aten.native_group_norm: _norm_flops(0),
    aten._native_batch_norm_legit_no_training: _batch_norm_eval_flops,
}


def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> int:
    """Multiply-adds (fvcore convention) of one forward pass of ``model`` on an input of ``input_shape``.

    Works for any image model. The input is random, made on the device and in the dtype of the
    model's first parameter: build the model on the ``meta`` device
    (``with torch.device("meta"): model = ...``) to count without computing anything. Runs in eval
    mode under ``torch.no_grad`` and restores the model's mode.
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.randn(tuple(input_shape), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_NORM_FORMULAS)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
