"""@triton.jit helpers shared by the kernel modules (imports triton: only the *_triton modules
import this)."""
import triton
import triton.language as tl


@triton.jit
def mma(a, b, acc, FP32: tl.constexpr):
    """acc + a @ b, float32 accumulation. float32 operands: exact IEEE products (no TF32, which a
    float32 tl.dot uses by default on a GPU); half operands: tensor cores."""
    if FP32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)
