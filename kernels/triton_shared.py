"""@triton.jit helpers shared by the kernel modules (imports triton: only the *_triton modules
import this)."""
import triton
import triton.language as tl

# (major, minor) of the triton in use. Its compiler decides what spills, so a launch config that is
# clean under one version may spill under another: the ops prune per version (see gelu_linear_triton).
TRITON_VERSION = tuple(int(part) for part in triton.__version__.split(".")[:2])


@triton.jit
def mma(a, b, acc, FP32: tl.constexpr):
    """acc + a @ b, float32 accumulation. float32 operands: exact IEEE products (no TF32, which a
    float32 tl.dot uses by default on a GPU); half operands: tensor cores."""
    if FP32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)
