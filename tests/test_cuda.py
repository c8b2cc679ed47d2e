"""The equivalence suite on a real GPU: what the interpreter cannot show (marked ``cuda``).

`make gpu-check` runs these (``pytest -m cuda``); without CUDA they are collected and skipped, so
a broken test is found on a CPU machine (tests/test_gpu_check.py checks that dry run).

- every op against float64 on CUDA, values and every gradient, all three dtypes, at MViTv2-T's own
  shapes (autotuned configs, real tilings) and at the odd interpreter shapes, with every buffer the
  launchers allocate poisoned (NaN) first;
- the model against the reference on CUDA (float32 and bf16 autocast);
- every backward run twice and compared bit for bit: on a GPU the programs run concurrently, so
  this is where an order-dependent sum (an atomic, a race) would show;
- half-precision stability at large attention logits.

The float64 references and check helpers are the op test modules' own (one copy of each); they
take ``device=``.
"""
from __future__ import annotations

import pytest
import torch

import test_gelu_linear as t_gelu
import test_max_pool_tokens as t_maxpool
import test_model as t_model
import test_model_video as t_video
import test_pool_attention_3d as t_attn3
import test_pool_attention_window as t_attnw
import test_model_detection as t_det
import test_norm_linear as t_norm
import test_pool_attention as t_attn
import test_pool_qkv as t_qkv
import test_pool_qkv_attention as t_qkv_attn
import fastmvit
from numerics import DTYPES

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.usefixtures("poisoned_buffers"),   # every buffer a launcher allocates starts as NaN
]
CUDA = "cuda"
ids = lambda d: str(d).removeprefix("torch.")


def assert_bitwise_equal(first, second, what):
    for i, (a, b) in enumerate(zip(first, second)):
        assert a is not None and torch.equal(a, b), f"{what}: output {i} differs between two identical runs"


# ------------------------------------------------------------------------------------------------
# Every op against float64 on CUDA
# ------------------------------------------------------------------------------------------------
# MViTv2-T at 224 (head dim 96, class token or not): stage 1 (56x56 queries, 7x7 keys), a
# q-strided block (28x28 from 56x56 keys pooled to 14x14), stage 3 (14x14, 7x7), stage 4 (7x7).
ATTENTION_SHAPES = [
    pytest.param(2, 1, (56, 56), (7, 7), 96, 1, id="s1-56x56-7x7-cls"),
    pytest.param(2, 2, (28, 28), (14, 14), 96, 0, id="s2-28x28-14x14"),
    pytest.param(2, 4, (14, 14), (7, 7), 96, 1, id="s3-14x14-7x7-cls"),
    pytest.param(2, 8, (7, 7), (7, 7), 96, 0, id="s4-7x7"),
] + t_attn.SHAPES


# mvit_v2_s at 16 x 224 x 224 (head dim 96, class token): block 0 (8x56x56 queries, 8x7x7 keys)
# and a stage-3 block (8x14x14, 8x7x7), plus the interpreter suite's odd 3-D shapes.
VIDEO_ATTENTION_SHAPES = [
    pytest.param(1, 1, (8, 56, 56), (8, 7, 7), 96, 1, id="v-block0-8x56x56-8x7x7"),
    pytest.param(2, 4, (8, 14, 14), (8, 7, 7), 96, 1, id="v-s3-8x14x14-8x7x7"),
] + t_attn3.SHAPES


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("B,H,q_size,k_size,D,sp", VIDEO_ATTENTION_SHAPES)
def test_pool_attention_3d_matches_float64(B, H, q_size, k_size, D, sp, dtype):
    t_attn3.check_case(B, H, q_size, k_size, D, sp, dtype, device=CUDA)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("B,H,q_size,k_size,D,sp", ATTENTION_SHAPES)
def test_pool_attention_matches_float64(B, H, q_size, k_size, D, sp, dtype):
    t_attn.check_case(B, H, q_size, k_size, D, sp, dtype, device=CUDA)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=ids)
def test_pool_attention_large_logits_are_stable(dtype):
    """Logits in the hundreds at the stage-1 shape: no overflow in half precision, and still within
    the dtype's tolerance of float64 (and at most twice eager's error)."""
    t_attn.check_case(1, 1, (56, 56), (7, 7), 96, 1, dtype, qk_scale=6.0, table_scale=2.0, device=CUDA)


# (B, grid, heads, D, (stride_q, stride_kv), class token): MViTv2-T's pooling, and the odd cases
QKV_CASES = [(2, (56, 56), 1, 96, (1, 4), 1), (2, (56, 56), 2, 48, (2, 4), 1), (2, (28, 28), 2, 96, (1, 2), 0),
             (2, (7, 7), 8, 96, (1, 1), 1)] + t_qkv.SMALL_CASES


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("case", QKV_CASES, ids=lambda c: f"{c[1][0]}x{c[1][1]}-h{c[2]}-D{c[3]}-s{c[4]}-cls{c[5]}")
def test_pool_qkv_matches_float64(case, dtype):
    B, hw, heads, D, strides, sp = case
    t_qkv.check_against_float64(B, hw, heads, D, strides, sp, dtype, device=CUDA)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("B,hw,C,sp", [(2, (56, 56), 96, 1), (2, (28, 28), 192, 0), (1, (7, 5), 40, 1)])
def test_max_pool_tokens_exact(B, hw, C, sp, dtype):
    x = t_maxpool.tie_inputs(B, hw, C, sp, dtype).to(CUDA)
    t_maxpool.check_exact(x, hw, 3, 2, sp)


# (B, T, K, N): MViTv2-T's stage 1 and stage 4 MLPs, and the odd interpreter shapes
GELU_SHAPES = [(2, 3137, 384, 96), (2, 50, 3072, 768)] + t_gelu.SHAPES


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("shape", GELU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gelu_linear_matches_float64(shape, dtype):
    t_gelu.check_against_float64(*shape, dtype, device=CUDA)


def test_gelu_linear_autocast_case_matches_float64():
    """bf16 h with float32 weights and a float32 residual stream (y float32), as under autocast."""
    t_gelu.check_against_float64(2, 785, 384, 96, torch.bfloat16, param_dtype=torch.float32,
                                 residual_dtype=torch.float32, device=CUDA)


def test_gelu_linear_without_gelu_matches_float64():
    """The attention projection's path (gelu=False) at MViTv2-T's stage-1 width."""
    t_gelu.check_against_float64(2, 3137, 96, 96, torch.bfloat16, device=CUDA, gelu=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("shape", [(2, 3137, 96, 288), (2, 50, 768, 3072), (1, 197, 136, 24)],
                         ids=lambda s: "x".join(map(str, s)))
def test_norm_linear_matches_float64(shape, dtype):
    t_norm.check_against_float64(*shape, dtype, device=CUDA)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=ids)
def test_norm_linear_autocast_matches_float64(dtype):
    t_norm.check_against_float64(2, 785, 192, 768, torch.float32, autocast_dtype=dtype, device=CUDA)


# ------------------------------------------------------------------------------------------------
# The model against the reference on CUDA
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [False, True], ids=["nocls", "cls"])
def test_model_float32_matches_float64_reference(cls):
    torch.manual_seed(0)
    ref, fast = t_model.make_pair(t_model.FOUR_STAGE.replace(with_cls_token=cls), (96, 64))
    t_model.check_against_float64(fast, ref, (96, 64), batch=2, backend="triton", device=CUDA)


def test_tiny_224_float32_matches_float64_reference():
    torch.manual_seed(0)
    ref, fast = t_model.make_pair(t_model.arch_config("tiny"), (224, 224))
    t_model.check_against_float64(fast, ref, (224, 224), batch=2, backend="triton", device=CUDA)


def test_model_bf16_autocast_no_worse_than_reference():
    t_model.check_bf16_autocast(t_model.FOUR_STAGE.replace(with_cls_token=True), (96, 64), "triton", device=CUDA)


# Detection windows: a stage-2-like block (q windows 14, kv windows 7 on a kv-stride-2 map), padded
# on both axes, and the interpreter suite's odd shapes.
WINDOW_ATTENTION_SHAPES = [
    pytest.param(2, 1, (30, 33), (15, 17), (14, 14), (7, 7), 96, id="w-30x33-14/7"),
] + t_attnw.SHAPES


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("B,H,q_size,k_size,wq,wk,D", WINDOW_ATTENTION_SHAPES)
def test_pool_attention_window_matches_float64(B, H, q_size, k_size, wq, wk, D, dtype):
    t_attnw.check_case(B, H, q_size, k_size, wq, wk, D, dtype, device=CUDA)


def test_detection_backbone_matches_float64_reference():
    """The small backbone plan on a 104 x 88 image, float32 (TF32 off: see conftest)."""
    ref, fast = t_det.make_pair()
    ref, fast = ref.to(CUDA), fast.to(CUDA)
    x = t_det.images(2, (104, 88)).to(CUDA)
    exact, g_exact = t_det.run(t_det.copy.deepcopy(ref).double(), x.double())
    eager, g_eager = t_det.run(ref, x)
    fused, g_fused = t_det.run(fast, x, "triton")
    for name in exact:
        t_det.assert_matches_float64(fused[name], eager[name], exact[name], name)
    for name in g_exact:
        t_det.assert_matches_float64(g_fused[name], g_eager[name], g_exact[name], f"grad {name}")


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16_autocast"])
def test_video_model_matches_float64_reference(autocast):
    torch.manual_seed(0)
    ref, fast = t_video.make_pair(t_video.THREE_STAGE.replace(num_heads=1), (8, 64, 64))
    t_video.check_against_float64(fast, ref, (8, 64, 64), batch=2, autocast=autocast, device=CUDA)


# ------------------------------------------------------------------------------------------------
# Determinism: every backward twice, bit for bit
# ------------------------------------------------------------------------------------------------
def _grads(fn, leaves, seed=2):
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(seed)
    douts = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype).to(o.device) for o in outs]
    return [o.detach() for o in outs] + list(torch.autograd.grad(outs, leaves, douts))


def _twice(fn, leaves, what):
    with fastmvit.use_backend("triton"):
        assert_bitwise_equal(_grads(fn, leaves), _grads(fn, leaves), what)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_pool_attention_backward_is_deterministic(dtype):
    q_size, k_size = (56, 56), (7, 7)
    leaves = [t.to(dtype).to(CUDA).requires_grad_() for t in t_attn.make_inputs(4, 1, q_size, k_size, 96, 1)]
    fn = lambda *t: fastmvit.kernels.pool_attention(*t, q_size, k_size, has_cls_token=True)
    _twice(fn, leaves, "pool_attention")


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_pool_attention_3d_backward_is_deterministic(dtype):
    q_size, k_size = (8, 56, 56), (8, 7, 7)
    leaves = [t.to(dtype).to(CUDA).requires_grad_() for t in t_attn3.make_inputs(2, 1, q_size, k_size, 96, 1)]
    fn = lambda q, k, v, tt, th, tw: fastmvit.kernels.pool_attention(q, k, v, th, tw, q_size, k_size, rel_pos_t=tt,
                                                                     has_cls_token=True)
    _twice(fn, leaves, "pool_attention (t, h, w)")


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_pool_attention_window_backward_is_deterministic(dtype):
    q_size, k_size, window = (64, 64), (16, 16), ((28, 28), (7, 7))
    leaves = [t.to(dtype).to(CUDA).requires_grad_()
              for t in t_attnw.make_inputs(2, 1, q_size, k_size, *window, 96)]
    fn = lambda *t: fastmvit.kernels.pool_attention(*t, q_size, k_size, window=window)
    _twice(fn, leaves, "pool_attention (windows)")


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_pool_qkv_3d_backward_is_deterministic(dtype):
    values = t_qkv.make_inputs(2, (8, 28, 28), 2, 96, 1)
    leaves = [t.to(dtype).to(CUDA).requires_grad_() for t in values]
    fn = lambda qkv, *p: fastmvit.kernels.pool_qkv(qkv, (8, 28, 28), 2, p[0:3], p[3:6], p[6:9], (1, 2, 2),
                                                   (1, 4, 4), has_cls_token=True)[:3]
    _twice(fn, leaves, "pool_qkv (T, H, W)")


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_pool_qkv_backward_is_deterministic(dtype):
    values = t_qkv.make_inputs(4, (56, 56), 1, 96, 1)
    leaves = [t.to(dtype).to(CUDA).requires_grad_() for t in values]
    fn = lambda qkv, *p: fastmvit.kernels.pool_qkv(qkv, (56, 56), 1, p[0:3], p[3:6], p[6:9], 1, 4,
                                                   has_cls_token=True)[:3]
    _twice(fn, leaves, "pool_qkv")


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_pool_qkv_attention_backward_is_deterministic(dtype):
    hw, strides = (28, 28), (1, 4)
    leaves = [t.detach().to(CUDA).requires_grad_() for t in t_qkv_attn.make_leaves(2, hw, 1, dtype)]
    rel = [t.detach().to(CUDA).requires_grad_() for t in t_qkv_attn.tables((28, 28), (7, 7), dtype)]
    fn = lambda *t: t_qkv_attn.run_fused(list(t[:10]), t[10:], hw, strides, 1)
    _twice(fn, leaves + rel, "pool_qkv_attention")


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_max_pool_tokens_backward_is_deterministic(dtype):
    x = torch.randn(4, 1 + 56 * 56, 96, generator=torch.Generator().manual_seed(0)).to(dtype).to(CUDA)
    fn = lambda t: fastmvit.kernels.max_pool_tokens(t, (56, 56), 3, 2, has_cls_token=True)
    _twice(fn, [x.requires_grad_()], "max_pool_tokens")


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("shape", [(8, 3137, 384, 96), (8, 50, 3072, 768)], ids=lambda s: "x".join(map(str, s)))
def test_gelu_linear_backward_is_deterministic(shape, dtype):
    """Stage 1 splits dW's reduction over rows (fixed-order partial sums); stage 4 does not."""
    B, T, K, N = shape
    values = t_gelu.make_inputs(B, T, K, N, True, True, True, dtype)
    leaves = [v.to(CUDA).requires_grad_(i < 4) for i, v in enumerate(values)]
    _twice(lambda *t: fastmvit.kernels.gelu_linear(*t), leaves, "gelu_linear")


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_norm_linear_backward_is_deterministic(dtype):
    """Stage 1: dW over row splits and the norm's partials, both fixed-order sums."""
    values = [v.to(CUDA).requires_grad_() for v in t_norm.make_inputs(8, 3136, 96, 288, dtype)]
    _twice(lambda *t: fastmvit.kernels.norm_linear(*t), values, "norm_linear")


def test_model_training_step_is_deterministic(monkeypatch):
    """A tiny-at-224 bf16-autocast training step twice: logits and every parameter gradient equal.
    cuDNN's patch-embedding conv is pinned to deterministic algorithms (that is torch's, not ours)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.manual_seed(0)
    model = fastmvit.mvitv2_tiny(num_classes=10, drop_path_rate=0.1).to(CUDA).train()
    x = torch.randn(4, 3, 224, 224, device=CUDA)
    weight = torch.randn(4, 10, device=CUDA)

    def step():
        torch.manual_seed(1)   # the same stochastic-depth masks
        logits, grads = t_model.run(model, x, weight, backend="triton", autocast=True)
        return [logits] + [grads[n] for n in sorted(grads)]

    assert_bitwise_equal(step(), step(), "tiny training step")
