"""fastmvit.kernels.pool_qkv (the fused pooling prologue) against float64 eager math.

The reference is docs/design.md, "Pooling attention" written out here in float64 (conv2d + layer_norm per q, k, v, the
class token split off and put back), independent of the op's own torch path. The Triton kernels run
in the interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1). Every buffer the launchers
allocate is poisoned with NaN first, so an unwritten value fails the test. Shapes are small and
odd (the interpreter is slow): 7x5 grids, head dim 24, 3 heads, class token or not, all strides.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F


import fastmvit
from fastmvit.kernels import pool_qkv
from numerics import assert_matches_float64

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def reference(qkv, hw, heads, weights, gammas, betas, strides, sp, eps=1e-6):
    """docs/design.md, "Pooling attention", in the dtype of the arguments: q, k, v of shape (B, heads, N_t, D)."""
    B, N, C = qkv.shape
    D = C // (3 * heads)
    outs = []
    for t, (w, g, b, s) in enumerate(zip(weights, gammas, betas, strides)):
        x = qkv.reshape(B, N, 3, heads, D)[:, :, t].transpose(1, 2)    # (B, heads, N, D)
        cls, grid = x[:, :, :sp], x[:, :, sp:]
        grid = grid.reshape(B * heads, *hw, D).movedim(-1, 1)           # (B * heads, D, *grid)
        conv = F.conv2d if len(hw) == 2 else F.conv3d
        grid = conv(grid, w, stride=s, padding=tuple(k // 2 for k in w.shape[2:]), groups=D)
        grid = grid.reshape(B, heads, D, -1).transpose(2, 3)
        outs.append(F.layer_norm(torch.cat([cls, grid], 2), (D,), g, b, eps))
    return outs


def make_inputs(B, hw, heads, D, sp, kernel=None, seed=0):
    """float64 leaves: qkv, 3 conv weights, 3 norm weights, 3 norm biases (random, never zero).
    The kernel defaults to 3 on every axis of hw ((H, W) or (T, H, W))."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    kernel = kernel or (3,) * len(hw)
    qkv = rand(B, sp + math.prod(hw), 3 * heads * D)
    weights = [rand(D, 1, *kernel) * 0.5 for _ in range(3)]
    gammas = [1 + 0.5 * rand(D) for _ in range(3)]
    betas = [0.5 * rand(D) for _ in range(3)]
    return [qkv] + weights + gammas + betas


def run(leaves, hw, heads, strides, sp, backend):
    qkv, w, g, b = leaves[0], leaves[1:4], leaves[4:7], leaves[7:10]
    with fastmvit.use_backend(backend):
        return pool_qkv(qkv, hw, heads, w, g, b, strides[0], strides[1], has_cls_token=bool(sp))


def check_against_float64(B, hw, heads, D, strides, sp, dtype, param_dtype=None, kernel=None, device="cpu"):
    """Forward values and every gradient of the Triton path against float64; the eager torch path in
    the same dtype sets how far the fused path may be (at most twice its error).

    The float64 reference starts from the same values (inputs and output gradients rounded to their
    dtypes first, as in FlashAttention's tests): the error measured is the computation's, not the
    input rounding's, which LayerNorm amplifies in rows of small variance."""
    param_dtype = param_dtype or dtype
    values = make_inputs(B, hw, heads, D, sp, kernel)
    values = [values[0].to(dtype)] + [t.to(param_dtype) for t in values[1:]]
    values = [t.to(device) for t in values]   # tests/test_cuda.py passes "cuda"
    exact_leaves = [t.double().requires_grad_() for t in values]
    ss = [strides[0], strides[1], strides[1]]
    exact = reference(exact_leaves[0], hw, heads, exact_leaves[1:4], exact_leaves[4:7],
                      exact_leaves[7:10], ss, sp)
    gen = torch.Generator().manual_seed(1)
    douts = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype).to(device) for o in exact]
    exact_grads = torch.autograd.grad(exact, exact_leaves, [d.double() for d in douts])

    results = {}
    for backend in ("triton", "torch"):
        leaves = [t.clone().requires_grad_() for t in values]
        q, k, v, q_size, k_size = run(leaves, hw, heads, strides, sp, backend)
        grads = torch.autograd.grad((q, k, v), leaves, douts)
        results[backend] = (q, k, v), grads
    (outs, grads), (eager_outs, eager_grads) = results["triton"], results["torch"]

    for name, out, eager, ref in zip("qkv", outs, eager_outs, exact):
        assert out.dtype == dtype and out.is_contiguous()
        assert_matches_float64(out, eager, ref.detach(), name=name)
    names = ["d_qkv"] + [f"d_{kind}_{t}" for kind in ("pool", "norm_w", "norm_b") for t in "qkv"]
    for name, grad, eager, ref in zip(names, grads, eager_grads, exact_grads):
        assert grad.dtype == (dtype if name == "d_qkv" else param_dtype), name
        assert_matches_float64(grad, eager, ref, name=name)
    return q_size, k_size


# (B, (H, W), heads, D, (stride_q, stride_kv), class token): odd grids, every stride
SMALL_CASES = [
    (2, (7, 5), 3, 24, (1, 2), 1),
    (2, (7, 5), 1, 24, (2, 4), 0),
    (1, (7, 5), 2, 24, (1, 1), 0),
    (1, (7, 5), 3, 24, (8, 4), 1),           # an 8-stride q grid is a single pooled row (1x1)
    (1, (5, 9), 2, 24, ((1, 2), (4, 1)), 1),  # non-square strides on a non-square grid
]


@pytest.mark.parametrize("case", SMALL_CASES, ids=lambda c: f"B{c[0]}-{c[1][0]}x{c[1][1]}-h{c[2]}-D{c[3]}-s{c[4]}-cls{c[5]}")
def test_float32_all_strides(case, poisoned_buffers):
    B, hw, heads, D, strides, sp = case
    check_against_float64(B, hw, heads, D, strides, sp, torch.float32)


HALF_CASES = [
    (1, (7, 5), 3, 24, (1, 2), 1),
    (1, (7, 5), 2, 24, (2, 4), 0),
    (1, (7, 5), 3, 24, (8, 4), 1),
]


# Video grids (T, H, W) with 3x3x3 kernels: (B, grid, heads, D, (stride_q, stride_kv), class token)
VIDEO_CASES = [
    (1, (3, 5, 4), 2, 24, ((1, 2, 2), (1, 2, 2)), 1),
    (2, (4, 3, 5), 1, 16, ((2, 1, 1), (1, 4, 4)), 0),      # a temporal stride; kv stride above the kernel
    (1, (2, 4, 3), 3, 24, ((1, 1, 1), (2, 2, 1)), 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", VIDEO_CASES, ids=lambda c: f"B{c[0]}-{'x'.join(map(str, c[1]))}-h{c[2]}-s{c[4]}-cls{c[5]}")
def test_video_grids(case, dtype, poisoned_buffers):
    B, grid, heads, D, strides, sp = case
    q_size, k_size = check_against_float64(B, grid, heads, D, strides, sp, dtype)
    assert len(q_size) == len(k_size) == 3


def test_video_kernel_1x3x3(poisoned_buffers):
    """A (1, 3, 3) kernel on a (T, H, W) grid: no temporal taps."""
    check_against_float64(1, (3, 4, 5), 2, 16, ((1, 2, 2), (1, 1, 1)), 1, torch.float32, kernel=(1, 3, 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", HALF_CASES, ids=lambda c: f"{c[1][0]}x{c[1][1]}-h{c[2]}-s{c[4]}-cls{c[5]}")
def test_half_dtypes(case, dtype, poisoned_buffers):
    B, hw, heads, D, strides, sp = case
    check_against_float64(B, hw, heads, D, strides, sp, dtype)


@pytest.mark.parametrize("D, dtype", [(16, torch.float32), (72, torch.bfloat16), (96, torch.float16)],
                         ids=lambda x: str(x))
def test_head_dims(D, dtype, poisoned_buffers):
    check_against_float64(1, (5, 3), 1, D, (2, 1), 1, dtype)


def test_realistic_stage4_block(poisoned_buffers):
    """An MViTv2 stage-4 block at 224 (7x7 grid, strides 1 and 1, head dim 96, class token), bf16,
    with 1 of its 8 heads (the interpreter is slow)."""
    q_size, k_size = check_against_float64(1, (7, 7), 1, 96, (1, 1), 1, torch.bfloat16)
    assert q_size == k_size == (7, 7)


def test_float32_params_with_half_activations(poisoned_buffers):
    """The autocast case: bf16 qkv, float32 parameters; outputs bf16, parameter grads float32."""
    check_against_float64(1, (7, 5), 2, 24, (1, 2), 1, torch.bfloat16, param_dtype=torch.float32)


def test_5x5_kernel(poisoned_buffers):
    check_against_float64(1, (6, 5), 2, 16, (2, 1), 0, torch.float32, kernel=(5, 3))


def test_strided_qkv_input(poisoned_buffers):
    """qkv as a strided view (a slice of a wider tensor, batch-major rows): read in place."""
    leaves = make_inputs(2, (7, 5), 3, 24, 1)
    wide = torch.randn(36, 2, 3 * 3 * 24 + 8, dtype=torch.float32)
    wide[:, :, 4:-4] = leaves[0].float().transpose(0, 1)
    qkv = wide.transpose(0, 1)[:, :, 4:-4]
    assert not qkv.is_contiguous() and qkv.stride(-1) == 1
    outs = run([qkv] + [t.float() for t in leaves[1:]], (7, 5), 3, (2, 1), 1, "triton")
    exact = reference(leaves[0], (7, 5), 3, leaves[1:4], leaves[4:7], leaves[7:10], [2, 1, 1], 1)
    for out, ref in zip(outs[:3], exact):
        assert_matches_float64(out, None, ref)


def test_sizes_follow_the_conv_formula():
    leaves = [t.float() for t in make_inputs(1, (7, 5), 1, 16, 0)]
    *_, q_size, k_size = run(leaves, (7, 5), 1, (2, (4, 8)), 0, "torch")
    assert q_size == ((7 + 2 - 3) // 2 + 1, (5 + 2 - 3) // 2 + 1) == (4, 3)
    assert k_size == ((7 + 2 - 3) // 4 + 1, (5 + 2 - 3) // 8 + 1) == (2, 1)


def test_torch_backend_matches_float64():
    """The CPU path of the model (plain torch) in float32, values and gradients."""
    exact_leaves = [t.requires_grad_() for t in make_inputs(2, (7, 5), 3, 24, 1)]
    exact = reference(exact_leaves[0], (7, 5), 3, exact_leaves[1:4], exact_leaves[4:7],
                      exact_leaves[7:10], [2, 4, 4], 1)
    leaves = [t.detach().float().requires_grad_() for t in exact_leaves]
    outs = run(leaves, (7, 5), 3, (2, 4), 1, "torch")
    for out, ref in zip(outs[:3], exact):
        assert_matches_float64(out, None, ref.detach())
    grads = torch.autograd.grad(outs[:3], leaves, [torch.ones_like(o) * 0.3 + o.detach() for o in outs[:3]])
    exact_grads = torch.autograd.grad(exact, exact_leaves, [torch.ones_like(o) * 0.3 + o.detach() for o in exact])
    for grad, ref in zip(grads, exact_grads):
        assert_matches_float64(grad, None, ref)


def test_backward_is_repeatable():
    """Same inputs, same gradients bit for bit (no atomics; partial sums reduced in a fixed order)."""
    leaves = [t.float().requires_grad_() for t in make_inputs(2, (5, 3), 2, 16, 1)]
    grads = []
    for _ in range(2):
        q, k, v, *_ = run(leaves, (5, 3), 2, (1, 2), 1, "triton")
        grads.append(torch.autograd.grad((q.sum(), (k * k).sum(), v[..., 1:].sum()), leaves))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_meta_device_goes_through_the_fake_op():
    """The cost model runs the model on meta tensors: the Triton path must dispatch one op there."""
    B, hw, heads, D = 4, (56, 56), 1, 96
    qkv = torch.empty(B, 1 + 56 * 56, 3 * heads * D, device="meta", dtype=torch.bfloat16, requires_grad=True)
    w = [torch.empty(D, 1, 3, 3, device="meta", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    g = [torch.empty(D, device="meta", dtype=torch.bfloat16, requires_grad=True) for _ in range(6)]
    seen = []

    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with fastmvit.use_backend("triton"), Record():
        q, k, v, q_size, k_size = pool_qkv(qkv, hw, heads, w, g[:3], g[3:], 1, 4, has_cls_token=True)
        (q.sum() + k.sum() + v.sum()).backward()
    assert q.shape == (B, heads, 1 + 56 * 56, D) and k.shape == v.shape == (B, heads, 1 + 14 * 14, D)
    assert (q_size, k_size) == ((56, 56), (14, 14))
    assert q.dtype == k.dtype == torch.bfloat16 and q.device.type == "meta"
    assert seen.count("fastmvit.pool_qkv.default") == 1, seen
    assert seen.count("fastmvit.pool_qkv_backward.default") == 1, seen
    assert qkv.grad.shape == qkv.shape and w[0].grad.shape == w[0].shape and g[5].grad.shape == (D,)


def test_torch_compile_fullgraph_sees_one_op():
    leaves = [t.float().requires_grad_() for t in make_inputs(1, (5, 3), 2, 16, 1)]

    def f(qkv, *params):
        q, k, v, _, _ = pool_qkv(qkv, (5, 3), 2, params[0:3], params[3:6], params[6:9], 2, 1,
                                 has_cls_token=True)
        return q.sum() + (k * v).sum()

    torch._dynamo.reset()
    with fastmvit.use_backend("triton"):
        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
        out = compiled(*leaves)
        grads = torch.autograd.grad(out, leaves)
        eager = f(*leaves)
        eager_grads = torch.autograd.grad(eager, leaves)
    torch.testing.assert_close(out, eager)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    leaves = [t.float() for t in make_inputs(1, (5, 3), 2, 16, 1)]
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        run(leaves, (5, 3), 2, (1, 1), 1, "triton")


def test_auto_backend_on_cpu_is_torch(monkeypatch):
    module = fastmvit.kernels.ops.pool_qkv
    monkeypatch.setattr(module, "pool_qkv_torch", lambda *args: ("torch", "path", "taken"))
    leaves = [t.float() for t in make_inputs(1, (5, 3), 2, 16, 1)]
    assert run(leaves, (5, 3), 2, (1, 1), 1, "auto")[:3] == ("torch", "path", "taken")


# --- bad input: a clear error that names the problem ---------------------------------------

def _good():
    leaves = [t.float() for t in make_inputs(2, (7, 5), 3, 24, 1)]
    return dict(qkv=leaves[0], hw_shape=(7, 5), num_heads=3, pool_weights=leaves[1:4],
                norm_weights=leaves[4:7], norm_biases=leaves[7:10], stride_q=1, stride_kv=2,
                has_cls_token=True)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("change, error, words", [
    (lambda a: a.update(qkv=a["qkv"][0]), ValueError, "qkv must be"),
    (lambda a: a.update(num_heads=5), ValueError, "not divisible by 3 \\* num_heads"),
    (lambda a: a.update(hw_shape=(5, 7 + 1)), ValueError, "needs N = 41 tokens"),
    (lambda a: a.update(has_cls_token=False), ValueError, "without a class token needs N = 35"),
    (lambda a: a.update(qkv=a["qkv"].to(torch.int32)), TypeError, "dtype"),
    (lambda a: a.update(pool_weights=a["pool_weights"][:2]), ValueError, "3 tensors"),
    (lambda a: a.update(pool_weights=[w[:, :, :2] for w in a["pool_weights"]]), ValueError, "odd"),
    (lambda a: a.update(pool_weights=[a["pool_weights"][0][:8]] * 3), ValueError, "head_dim=24"),
    (lambda a: a.update(norm_biases=[b[:-1] for b in a["norm_biases"]]), ValueError, "norm_biases"),
    (lambda a: a.update(norm_weights=[g.half() for g in a["norm_weights"]]), TypeError, "share one dtype"),
    (lambda a: a.update(norm_weights=[g.to("meta") for g in a["norm_weights"]]), ValueError, "is on meta"),
    (lambda a: a.update(stride_q=0), ValueError, "stride_q"),
    (lambda a: a.update(stride_kv=(2, 2, 2)), ValueError, "stride_kv"),
])
def test_bad_input_is_a_clear_error(change, error, words, backend):
    args = _good()
    change(args)
    with fastmvit.use_backend(backend), pytest.raises(error, match=words):
        pool_qkv(**args)
