"""fastmvit.kernels.max_pool_tokens (MViTv2's max-pool shortcut on tokens) against float64 torch.

The reference is F.max_pool2d in float64 on a contiguous (B, C, H, W) copy of the grid, the class
token put back with cat, written out here independently of the op's torch path. A max is exact in
float64 (the inputs are the dtype's own values), so values are compared exactly; so are gradients:
the output gradients are multiples of 1/4 in [-2, 2], so the sums at inputs that win several
windows are exact in every dtype too. Inputs are rounded to a few levels (many ties, the case bf16
and fp16 make common), which checks torch's tie rule (the first maximum in row-major window order
wins) through the gradient and directly on the argmax against torch's own indices.

The Triton kernels run in the interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1). Every
buffer the launchers allocate is poisoned first (NaN, and 255 for the uint8 argmax).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fastmvit
from fastmvit.kernels import max_pool_tokens
from fastmvit.kernels.args import pooled_size
from numerics import DTYPES, assert_matches_float64

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _pool_fn(hw):
    return F.max_pool2d if len(hw) == 2 else F.max_pool3d


def reference(x, hw, kernel, stride, sp):
    """y (B, sp + pooled rows, C) in x's dtype: max_pool2d (3d for a (T, H, W) grid) on a
    contiguous NC(T)HW copy, cat the token."""
    B, N, C = x.shape
    grid = x[:, sp:].reshape(B, *hw, C).movedim(-1, 1).contiguous()
    pooled = _pool_fn(hw)(grid, kernel, stride, padding=tuple(k // 2 for k in kernel))
    return torch.cat([x[:, :sp], pooled.flatten(2).transpose(1, 2)], dim=1)


def torch_indices(x, hw, kernel, stride, sp):
    """torch's argmax (flat index into the grid), (B, pooled rows, C) int64."""
    B, N, C = x.shape
    grid = x[:, sp:].reshape(B, *hw, C).movedim(-1, 1).contiguous()
    _, idx = _pool_fn(hw)(grid, kernel, stride, padding=tuple(k // 2 for k in kernel), return_indices=True)
    return idx.flatten(2).transpose(1, 2)


def offsets_to_indices(argmax, hw, kernel, stride):
    """Our uint8 window offsets -> torch's flat grid indices, (B, pooled rows, C) int64. The
    offset is row-major over the window's axes; so is the flat index over the grid's."""
    out = pooled_size(hw, kernel, stride)
    a = argmax.long()
    p = torch.arange(math.prod(out), device=a.device)[None, :, None]
    index = torch.zeros_like(a)
    for axis in range(len(hw)):
        inner_out = math.prod(out[axis + 1:])
        inner_k = math.prod(kernel[axis + 1:])
        coord = (p // inner_out) % out[axis] * stride[axis] - kernel[axis] // 2 + (a // inner_k) % kernel[axis]
        index = index * hw[axis] + coord
    return index


def tie_inputs(B, hw, C, sp, dtype, seed=0, levels=4):
    """x with values in a few levels (many ties), and a quantised output gradient (exact sums)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-levels // 2, levels - levels // 2, (B, sp + math.prod(hw), C), generator=gen)
    x = (x.double() * 0.5).to(dtype)
    return x


def quantised_grad(shape, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(-8, 9, shape, generator=gen).double() / 4).to(dtype)


def run(x, hw, kernel, stride, sp, backend="triton"):
    with fastmvit.use_backend(backend):
        return max_pool_tokens(x, hw, kernel, stride, has_cls_token=bool(sp))


def check_exact(x, hw, kernel, stride, sp, backend="triton"):
    """Forward values and the input gradient exactly equal to float64 torch (NaN where it has NaN),
    and, on the triton backend, the argmax equal to torch's indices in x's own dtype."""
    kernel = (kernel,) * len(hw) if isinstance(kernel, int) else kernel
    stride = (stride,) * len(hw) if isinstance(stride, int) else stride
    exact_x = x.detach().double().requires_grad_()
    exact = reference(exact_x, hw, kernel, stride, sp)
    dy = quantised_grad(exact.shape, x.dtype).to(x.device)
    (exact_dx,) = torch.autograd.grad(exact, exact_x, dy.double())

    leaf = x.detach().clone().requires_grad_()
    y = run(leaf, hw, kernel, stride, sp, backend)
    assert y.dtype == x.dtype and y.is_contiguous() and y.shape == exact.shape
    torch.testing.assert_close(y.double(), exact.detach(), rtol=0, atol=0, equal_nan=True)
    (dx,) = torch.autograd.grad(y, leaf, dy)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    torch.testing.assert_close(dx.double(), exact_dx, rtol=0, atol=0)

    if backend == "triton":
        with fastmvit.use_backend("triton"):
            _, argmax = torch.ops.fastmvit.max_pool_tokens(x, list(hw), list(kernel), list(stride),
                                                           bool(sp), True)
        n_out = math.prod(pooled_size(hw, kernel, stride))
        assert argmax.dtype == torch.uint8 and argmax.shape == (x.shape[0], n_out, x.shape[2])
        assert torch.equal(offsets_to_indices(argmax, hw, kernel, stride),
                           torch_indices(x.detach(), hw, kernel, stride, sp))


# (grid, kernel, stride): MViTv2's 3x3 / 2 and general small windows, odd grids
GEOMETRIES = [
    ((7, 5), (3, 3), (2, 2)),
    ((9, 6), (3, 3), (1, 1)),
    ((3, 11), (2, 2), (2, 2)),
    ((7, 5), (3, 2), (2, 1)),
    ((9, 6), (2, 1), (1, 2)),
    ((9, 6), (5, 5), (4, 4)),
]


@pytest.mark.parametrize("sp", [0, 1], ids=["nocls", "cls"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0][0]}x{g[0][1]}-k{g[1][0]}{g[1][1]}-s{g[2][0]}{g[2][1]}")
def test_ties_match_torch_exactly(geometry, dtype, sp, poisoned_buffers):
    hw, kernel, stride = geometry
    x = tie_inputs(2, hw, 24, sp, dtype, seed=hash((hw, kernel, stride, sp)) % 1000)
    check_exact(x, hw, kernel, stride, sp)


# Video (T, H, W): MViTv2's (1, 3, 3) / (1, 2, 2) shortcut, and windows and strides on t as well
VIDEO_GEOMETRIES = [
    ((3, 7, 5), (1, 3, 3), (1, 2, 2)),
    ((4, 5, 6), (3, 3, 3), (2, 1, 2)),
    ((5, 3, 4), (3, 1, 2), (3, 2, 1)),
]


@pytest.mark.parametrize("sp", [0, 1], ids=["nocls", "cls"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("geometry", VIDEO_GEOMETRIES, ids=lambda g: "-".join("x".join(map(str, v)) for v in g))
def test_video_grids_match_torch_exactly(geometry, dtype, sp, poisoned_buffers):
    hw, kernel, stride = geometry
    x = tie_inputs(2, hw, 24, sp, dtype, seed=hash((hw, kernel, stride, sp)) % 1000)
    check_exact(x, hw, kernel, stride, sp)


@pytest.mark.parametrize("C, dtype", [(72, torch.bfloat16), (96, torch.float16), (40, torch.float32)],
                         ids=lambda v: str(v))
def test_channel_blocks(C, dtype, poisoned_buffers):
    """Several channel blocks per row, the last one partly masked (72 = 4.5 x 16, 40 = 1.25 x 32)."""
    x = tie_inputs(1, (5, 7), C, 1, dtype, levels=6)
    check_exact(x, (5, 7), 3, 2, 1)


def test_random_values_and_gradients(poisoned_buffers):
    """Continuous random values and gradients: close to float64 (dx sums up to 9 float32 values at
    stride 1) and no further from it than eager torch in the same dtype."""
    for dtype in DTYPES:
        gen = torch.Generator().manual_seed(3)
        x64 = torch.randn(2, 1 + 9 * 6, 24, generator=gen, dtype=torch.float64)
        x = x64.to(dtype)
        exact_x = x.double().requires_grad_()
        exact = reference(exact_x, (9, 6), (3, 3), (1, 1), 1)
        dy = torch.randn(exact.shape, generator=gen, dtype=torch.float64).to(dtype)
        (exact_dx,) = torch.autograd.grad(exact, exact_x, dy.double())
        outs = {}
        for backend in ("triton", "torch"):
            leaf = x.clone().requires_grad_()
            y = run(leaf, (9, 6), 3, 1, 1, backend)
            outs[backend] = y, torch.autograd.grad(y, leaf, dy)[0]
        (y, dx), (eager_y, eager_dx) = outs["triton"], outs["torch"]
        assert torch.equal(y.double(), exact.detach())
        assert_matches_float64(dx, eager_dx, exact_dx, name=f"dx {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_and_inf_follow_torch(dtype, poisoned_buffers):
    """A NaN wins its windows (the last NaN in scan order when there are two), -inf everywhere in a
    window points the gradient at its first in-grid element, as torch does."""
    hw = (7, 6)
    x = tie_inputs(2, hw, 16, 1, dtype, seed=5)
    grid = x[:, 1:].view(2, 7, 6, 16)
    grid[0, 2, 3, 0] = float("nan")
    grid[0, 2, 4, 0] = float("nan")          # same windows as the one before: the later one wins
    grid[1, 0, 0, 5] = float("nan")          # a corner
    grid[1, 6, 5, 7] = float("nan")
    grid[0, :, :, 9] = float("-inf")         # a channel of -inf only
    grid[1, 3:, 2:, 11] = float("-inf")
    x[1, 0, 3] = float("nan")                # the class token passes through as is
    for kernel, stride in (((3, 3), (2, 2)), ((3, 3), (1, 1)), ((2, 2), (2, 2))):
        check_exact(x, hw, kernel, stride, 1)


def test_strided_input_views(poisoned_buffers):
    """x as a slice of a wider buffer (token stride != C, batch-major rows): read in place; a
    strided channel dim is copied first. Same exact results."""
    hw, C = (7, 5), 24
    base = tie_inputs(2, hw, C, 1, torch.float16, seed=7)
    wide = torch.randn(1 + 35, 2, C + 8).half()
    wide[:, :, 4:-4] = base.transpose(0, 1)
    x = wide.transpose(0, 1)[:, :, 4:-4]
    assert not x.is_contiguous() and x.stride(-1) == 1 and x.stride(1) != C
    check_exact(x, hw, 3, 2, 1)
    every_other = torch.zeros(2, 36, 2 * C, dtype=torch.float16)
    every_other[..., ::2] = base
    check_exact(every_other[..., ::2], hw, 3, 2, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_torch_backend(dtype):
    for sp in (0, 1):
        for hw, kernel, stride in GEOMETRIES[:4]:
            check_exact(tie_inputs(2, hw, 8, sp, dtype), hw, kernel, stride, sp, backend="torch")


def test_sizes_follow_the_pool_formula():
    x = torch.randn(1, 1 + 7 * 5, 8)
    assert run(x, (7, 5), 3, 2, 1, "torch").shape == (1, 1 + 4 * 3, 8)
    assert run(x, (7, 5), (2, 1), (4, 8), 1, "torch").shape == (1, 1 + 2 * 1, 8)
    assert pooled_size((56, 56), (3, 3), (2, 2)) == (28, 28)


def test_backward_is_repeatable():
    x = tie_inputs(2, (9, 6), 24, 1, torch.float32, levels=3).requires_grad_()
    grads = []
    for _ in range(2):
        y = run(x, (9, 6), 3, 1, 1)
        grads.append(torch.autograd.grad((y * y).sum(), x)[0])
    assert torch.equal(*grads)


def _record_ops():
    """A dispatch mode that records (op name, outputs' (shape, dtype)) without keeping the outputs
    alive (holding dx would make autograd copy it into x.grad instead of stealing it)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            meta = tree_map(lambda t: (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t, out)
            self.calls.append((str(func), meta))
            return out

    return Record()


def _op_outputs(record, name):
    return [out for func, out in record.calls if func == f"fastmvit.{name}.default"]


def test_meta_device_shapes_and_bytes():
    """On meta tensors the fake implementations run: one op each way with the real outputs'
    shapes and dtypes (the cost model counts those bytes), and no argmax without a gradient."""
    from fastmvit.costmodel import TrafficCounter
    B, H, W, C = 8, 56, 56, 192
    G, Gp = H * W, 28 * 28
    x = torch.empty(B, 1 + G, C, device="meta", dtype=torch.bfloat16, requires_grad=True)
    with fastmvit.use_backend("triton"), _record_ops() as record:
        with TrafficCounter() as fwd:
            y = max_pool_tokens(x, (H, W), 3, 2, has_cls_token=True)
        with TrafficCounter() as bwd:
            y.backward(torch.empty_like(y))
    (((y_shape, _), argmax),) = _op_outputs(record, "max_pool_tokens")
    (dx,) = _op_outputs(record, "max_pool_tokens_backward")
    assert y.shape == y_shape == (B, 1 + Gp, C) and y.dtype == torch.bfloat16 and y.device.type == "meta"
    assert argmax == ((B, Gp, C), torch.uint8)
    assert dx == (x.shape, torch.bfloat16) and x.grad.shape == x.shape
    assert (fwd.traffic.launches, bwd.traffic.launches) == (1, 1)
    x_bytes, y_bytes, arg_bytes = B * (1 + G) * C * 2, B * (1 + Gp) * C * 2, B * Gp * C
    assert fwd.traffic.bytes_read + fwd.traffic.bytes_written == x_bytes + y_bytes + arg_bytes
    assert bwd.traffic.bytes_read + bwd.traffic.bytes_written == y_bytes + arg_bytes + x_bytes

    for grad_mode, requires_grad in ((False, True), (True, False)):
        x = torch.empty(B, 1 + G, C, device="meta", dtype=torch.bfloat16, requires_grad=requires_grad)
        with fastmvit.use_backend("triton"), torch.set_grad_enabled(grad_mode), _record_ops() as record:
            y = max_pool_tokens(x, (H, W), 3, 2, has_cls_token=True)
        ((_, argmax),) = _op_outputs(record, "max_pool_tokens")
        assert argmax == ((0,), torch.uint8) and not y.requires_grad


def test_no_argmax_without_grad_on_cpu(poisoned_buffers):
    """Under no_grad the real op writes no argmax either (an empty uint8 tensor), same y."""
    x = tie_inputs(1, (7, 5), 24, 1, torch.float32).requires_grad_()
    with fastmvit.use_backend("triton"), torch.no_grad(), _record_ops() as record:
        y = max_pool_tokens(x, (7, 5), 3, 2, has_cls_token=True)
    ((_, argmax),) = _op_outputs(record, "max_pool_tokens")
    assert argmax == ((0,), torch.uint8)
    assert torch.equal(y, reference(x.detach(), (7, 5), (3, 3), (2, 2), 1))


def test_torch_compile_fullgraph():
    x = tie_inputs(2, (7, 5), 24, 1, torch.float32).requires_grad_()

    def f(x):
        return (max_pool_tokens(x, (7, 5), 3, 2, has_cls_token=True) ** 2).sum()

    torch._dynamo.reset()
    with fastmvit.use_backend("triton"):
        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
        out = compiled(x)
        (grad,) = torch.autograd.grad(out, x)
        eager = f(x)
        (eager_grad,) = torch.autograd.grad(eager, x)
    assert torch.equal(out, eager) and torch.equal(grad, eager_grad)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        run(torch.randn(1, 35, 8), (7, 5), 3, 2, 0)


def test_auto_backend_on_cpu_is_torch(monkeypatch):
    module = fastmvit.kernels.ops.max_pool_tokens
    monkeypatch.setattr(module, "max_pool_tokens_torch", lambda *args: "torch path")
    assert run(torch.randn(1, 35, 8), (7, 5), 3, 2, 0, "auto") == "torch path"


# --- bad input: a clear error that names the problem ---------------------------------------

@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("args, error, words", [
    (dict(x=torch.randn(36, 8)), ValueError, "x must be \\(B, N, C\\)"),
    (dict(hw_shape=(5, 8)), ValueError, "needs N = 41 tokens"),
    (dict(has_cls_token=False), ValueError, "without a class token needs N = 35"),
    (dict(hw_shape=(7,)), ValueError, "hw_shape"),
    (dict(kernel=0), ValueError, "kernel must be"),
    (dict(kernel=(3, -1)), ValueError, "kernel must be"),
    (dict(stride=0), ValueError, "stride must be"),
    (dict(stride=(2, 2, 2)), ValueError, "stride must be"),
    (dict(kernel=17), ValueError, "more than 256 taps"),
    (dict(x=torch.randn(1, 36, 8).to(torch.int32)), TypeError, "dtype"),
])
def test_bad_input_is_a_clear_error(args, error, words, backend):
    full = dict(x=torch.randn(1, 36, 8), hw_shape=(7, 5), kernel=3, stride=2, has_cls_token=True)
    full.update(args)
    with fastmvit.use_backend(backend), pytest.raises(error, match=words):
        max_pool_tokens(**full)


def test_float64_needs_the_torch_backend():
    with fastmvit.use_backend("triton"), pytest.raises(TypeError, match="'triton' backend"):
        max_pool_tokens(torch.randn(1, 35, 8, dtype=torch.float64), (7, 5), 3, 2)
