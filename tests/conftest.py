"""Test session set-up.

Without a GPU, every Triton kernel runs in Triton's CPU interpreter. TRITON_INTERPRET must be set
before triton is imported (importing torch does not import triton).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 keeps FMA fusion



def _mend_interpreter_bf16_dot() -> None:
    """Make the interpreter's tl.dot correct for bfloat16 operands (test-only patch).

    The interpreter keeps bf16 as raw uint16 bit patterns and its dot multiplies those bits
    (triton-lang/triton#11584). Widen bf16 operands to float32 first: shift
    the bits left by 16 and view them as float32. The product of two bf16 values is exact in float32,
    which is what tensor cores compute, so the kernel under test is unchanged.
    """
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "_fastmvit_bf16", False):
        return
    original = builder.create_dot

    def widen(handle):
        if handle.dtype.scalar == tl.bfloat16:
            bits = handle.data.astype(np.uint32) << np.uint32(16)
            return interpreter.TensorHandle(bits.view(np.float32), tl.float32)
        return handle

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    create_dot._fastmvit_bf16 = True
    builder.create_dot = create_dot


def _mend_interpreter_bf16_rounding() -> None:
    """Make the interpreter's float32 -> bfloat16 casts round to nearest even, as a GPU's
    ``cvt.rn.bf16.f32`` does (test-only patch).

    The interpreter truncates them (``cast_impl`` passes no rounding mode to ``_convert_float``, and its
    RTNE branch rounds half up and drops the carry into the exponent): a bf16 result stored by a
    kernel was up to one ulp off, twice the error of eager torch. Convert with torch instead.
    """
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = interpreter.InterpreterBuilder
    if getattr(builder.cast_impl, "_fastmvit_bf16", False):
        return
    cast_impl, fp_to_fp = builder.cast_impl, builder.create_fp_to_fp

    def to_bf16(handle):
        data = torch.from_numpy(np.ascontiguousarray(handle.data, dtype=np.float32))
        bits = data.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return interpreter.TensorHandle(bits, tl.bfloat16)

    def mended_cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return to_bf16(src)
        return cast_impl(self, src, dst_type)

    def mended_fp_to_fp(self, src, dst_type, rounding_mode):
        if (src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16
                and rounding_mode == interpreter._ir.ROUNDING_MODE.RTNE):
            return to_bf16(src)
        return fp_to_fp(self, src, dst_type, rounding_mode)

    mended_cast_impl._fastmvit_bf16 = True
    builder.cast_impl = mended_cast_impl
    builder.create_fp_to_fp = mended_fp_to_fp


def _mend_interpreter_index() -> None:
    """Let the interpreter use a runtime int as a Python index (``range(0, K, BLOCK_K)`` over a kernel
    argument K), on every supported triton (test-only patch).

    The interpreter holds scalars as 1-element 1-D numpy arrays. Triton 3.6's ``tensor.__index__`` is
    ``int(handle.data)``, which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted to Python
    scalars"); triton 3.9 squeezes first. Wrap the function that installs it, so the index always reads
    the one element (and still fails on a real block, as it should).
    """
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_fastmvit_index", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(())))

    patch_lang_tensor._fastmvit_index = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if os.environ.get("TRITON_INTERPRET") == "1":
    _mend_interpreter_index()
    _mend_interpreter_bf16_dot()
    _mend_interpreter_bf16_rounding()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test: `make test` runs one pytest-xdist worker per core, and two
    threads per worker on two shared cores spin-wait (a small forward went from milliseconds to
    seconds that way)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def poisoned_buffers(monkeypatch):
    """Every buffer the Triton launchers allocate (outputs, scratch, partial sums) starts as NaN
    (integers: their max), so an element a kernel fails to write shows up. The launchers all
    allocate through ``fastmvit.kernels.triton_helpers.empty``."""
    from fastmvit.kernels import triton_helpers
    from numerics import poison_
    original = triton_helpers.empty
    monkeypatch.setattr(triton_helpers, "empty", lambda *shape, **kw: poison_(original(*shape, **kw)))


@pytest.fixture
def device() -> torch.device:
    """Where tensors live: CUDA when present, else the CPU (kernels in the interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
