"""Shared pieces of the benchmark suites: environment record, MViTv2 shapes, timing, models.

Every timed result and every modeled record carries the same labels, which the dashboard groups
by (see benchmarks/conftest.py for the fixtures that attach them):

    suite   "op" or "model"
    case    what is run: an op shape ("s1b0 q3136 k196 h1 d96") or a model ("tiny b8")
    impl    the contender: "eager" (op baseline), "reference" (model baseline), "fastmvit",
            "sdpa", "flex", "reference+compile", "fastmvit+compile", ...
    pass    "fwd", "fwd+bwd" (ops); "infer", "train" (models)
    dtype   "bfloat16", "float16", "float32"

Speed-ups are baseline time / contender time in the same (suite, case, pass, dtype) group.
Nothing here runs a Triton kernel on the CPU: interpreter runs are never timed.
"""
from __future__ import annotations

import datetime as _dt
import functools
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
BASELINE_IMPL = {"op": "eager", "model": "reference"}
# The op-level suites (fused kernel against eager torch) and the op each one benchmarks.
OP_SUITES = {"bench_pool_attention": "pool_attention", "bench_pool_qkv": "pool_qkv",
             "bench_gelu_linear": "gelu_linear", "bench_max_pool_tokens": "max_pool_tokens",
             "bench_video": "pool_attention (t, h, w)", "bench_detection": "pool_attention (windows)"}
MODEL_ARCHS = ("tiny", "small", "base", "large")
# The video benchmarks' setting (the video issue's): torchvision's mvit_v2_s, 16 x 224 x 224 clips,
# batch 4, bf16.
VIDEO_CLIP = (16, 224, 224)
VIDEO_BATCH = 4
# The detection benchmarks' setting (the detection issue's): the backbone at 1024 x 1024 and
# 800 x 1333, batch 2, bf16; the op shapes at 1024 x 1024.
DETECTION_IMAGES = ((1024, 1024), (800, 1333))
DETECTION_BATCH = 2


# ----------------------------------------------------------------------------- environment

def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def environment() -> dict:
    """Where and with what the numbers were taken: device, GPU, driver, CUDA, torch, triton,
    fastmvit version and git commit, date (UTC), CPU model."""
    import fastmvit
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else None
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) if cuda else None
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "device": "cuda" if cuda else "cpu",
        "device_name": gpu or cpu_model(),
        "gpu": gpu,
        "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "driver": driver.splitlines()[0] if driver else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "fastmvit": fastmvit.__version__,
        "commit": commit,
        "commit_short": commit[:7] if commit else None,
        "dirty": bool(dirty),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def device_slug(env: dict) -> str:
    """A file-name friendly device label: 'cuda-nvidia-h100-80gb-hbm3' or 'cpu'."""
    if env["device"] != "cuda":
        return "cpu"
    name = "".join(c if c.isalnum() else "-" for c in env["gpu"].lower())
    return "cuda-" + "-".join(filter(None, name.split("-")))


# ----------------------------------------------------------------------------- shapes

@dataclass(frozen=True)
class AttentionShape:
    """One pooling-attention shape of an MViTv2 block (docs/design.md, "Pooling attention").

    in_grid: (H, W) entering the block; q_grid / kv_grid after pooling; heads, head_dim per head;
    cls: a class token rides along (N = 1 + H*W); rel_len: (len_h, len_w) of the rel-pos tables.
    blocks: how many blocks of the arch have exactly this shape."""
    arch: str
    stage: int
    first: bool
    heads: int
    head_dim: int
    in_grid: tuple[int, int]
    q_grid: tuple[int, int]
    kv_grid: tuple[int, int]
    stride_q: int
    stride_kv: int
    cls: bool
    rel_len: tuple[int, int]
    blocks: int = 1

    @property
    def nq(self) -> int:
        return self.q_grid[0] * self.q_grid[1] + self.cls

    @property
    def nk(self) -> int:
        return self.kv_grid[0] * self.kv_grid[1] + self.cls

    @property
    def label(self) -> str:
        return (f"{self.arch} s{self.stage + 1}{'a' if self.first else 'b'} q{self.nq} k{self.nk} "
                f"h{self.heads} d{self.head_dim}")


def _plan_from_spec(arch: str, img: int) -> list[dict]:
    """The per-block plan straight from docs/design.md, "The image model" (used when fastmvit.reference is missing)."""
    c0, heads0, depths = {"tiny": (96, 1, (1, 2, 5, 2)), "small": (96, 1, (1, 2, 11, 2)),
                          "base": (96, 1, (2, 3, 16, 3)), "large": (144, 2, (2, 6, 36, 4))}[arch]
    side = (img + 2 * 3 - 7) // 4 + 1
    kv_stride, plan = 4, []
    for stage, depth in enumerate(depths):
        for j in range(depth):
            sq = 2 if (stage > 0 and j == 0) else 1
            if sq > 1:
                kv_stride = max(kv_stride // 2, 1)
            q_side = (side + 2 - 3) // sq + 1
            kv_side = (side + 2 - 3) // kv_stride + 1
            plan.append(dict(stage=stage, first=j == 0, heads=heads0 * 2 ** stage, head_dim=c0 // heads0,
                             in_grid=(side, side), q_grid=(q_side, q_side), kv_grid=(kv_side, kv_side),
                             stride_q=sq, stride_kv=kv_stride,
                             rel_len=(2 * max(q_side, kv_side) - 1,) * 2))
            side = q_side
    return plan


def _plan(arch: str, img: int) -> list[dict]:
    try:
        from fastmvit.reference.config import block_specs, get_config
    except ImportError:
        return _plan_from_spec(arch, img)
    plan = []
    for b in block_specs(get_config(arch), img):
        plan.append(dict(stage=b.stage, first=b.index == 0 or b.stride_q[0] > 1, heads=b.num_heads,
                         head_dim=b.head_dim, in_grid=tuple(b.input_size), q_grid=tuple(b.q_size),
                         kv_grid=tuple(b.kv_size), stride_q=b.stride_q[0], stride_kv=b.stride_kv[0],
                         rel_len=tuple(b.rel_pos_len)))
    return plan


def attention_shapes(arch: str = "small", img: int = 224, cls: bool = False) -> list[AttentionShape]:
    """The distinct pooling-attention shapes of an arch at `img` x `img`, in block order, each
    with the number of blocks that have it. small at 224: q/k tokens 3136/196, 784/784, 784/196,
    196/784, 196/196, 49/196, 49/49 with 1, 2, 2, 4, 4, 8, 8 heads (docs/design.md, "Pooling attention")."""
    out: dict[tuple, AttentionShape] = {}
    for p in _plan(arch, img):
        key = (p["heads"], p["in_grid"], p["q_grid"], p["kv_grid"])
        if key in out:
            s = out[key]
            out[key] = AttentionShape(**{**s.__dict__, "blocks": s.blocks + 1})
        else:
            out[key] = AttentionShape(arch=arch, cls=cls, **p)
    return list(out.values())


@dataclass(frozen=True)
class MlpShape:
    """The MLP tail of MViTv2 blocks (``fastmvit.kernels.gelu_linear``): h (B, tokens, K) through
    GELU and fc2 (N, K) onto the residual (B, tokens, N). K = mlp_hidden (4 C), N = C = dim_out.
    blocks: {arch: how many blocks of that arch have exactly this shape}."""
    stage: int
    tokens: int
    k: int
    n: int
    blocks: tuple[tuple[str, int], ...] = ()

    @property
    def label(self) -> str:
        return f"s{self.stage + 1} t{self.tokens} k{self.k} n{self.n}"


@dataclass(frozen=True)
class ShortcutPoolShape:
    """The residual max-pool of a block whose q is strided (``fastmvit.kernels.max_pool_tokens``):
    tokens (B, cls + H * W, C) pooled with a (stride + 1) window, padding window // 2."""
    arch: str
    stage: int
    grid: tuple[int, int]
    out_grid: tuple[int, int]
    channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    cls: bool

    @property
    def label(self) -> str:
        (h, w), (oh, ow) = self.grid, self.out_grid
        return f"s{self.stage + 1} {h}x{w}->{oh}x{ow} c{self.channels} {'cls' if self.cls else 'nocls'}"


def mlp_shapes(archs=("tiny", "small"), img: int = 224) -> list[MlpShape]:
    """The distinct MLP-tail shapes of the archs at `img` x `img`, in block order (tiny and small
    at 224 share theirs: tokens 3136/784/196/49, N = C = 96/192/384/768, K = 4 C)."""
    from fastmvit.reference.config import block_specs, get_config
    out: dict[tuple, dict] = {}
    for arch in archs:
        for b in block_specs(get_config(arch), img):
            key = (b.stage, b.q_size[0] * b.q_size[1], b.mlp_hidden, b.dim_out)
            counts = out.setdefault(key, {})
            counts[arch] = counts.get(arch, 0) + 1
    return [MlpShape(*key, blocks=tuple(counts.items())) for key, counts in out.items()]


def shortcut_pool_shapes(arch: str = "tiny", img: int = 224) -> list[ShortcutPoolShape]:
    """The pooled residual shortcuts of an arch at `img` x `img` (the blocks with a strided q), each
    with and without a class token. The shortcut is pooled after the block's projection when the
    width changes in the attention (MViTv2's default), so C is the block's output width: tiny at
    224 has 56x56 C 192, 28x28 C 384, 14x14 C 768."""
    from fastmvit.reference.config import block_specs, get_config
    out = []
    for b in block_specs(get_config(arch), img):
        if max(b.stride_q) == 1:
            continue
        kernel = tuple(s + 1 for s in b.stride_q)     # official kernel_skip: stride + 1 where strided
        for cls in (True, False):
            out.append(ShortcutPoolShape(arch=arch, stage=b.stage, grid=tuple(b.input_size),
                                         out_grid=tuple(b.q_size),
                                         channels=b.dim_out if b.dim_change == "attention" else b.dim,
                                         kernel=kernel, stride=tuple(b.stride_q), cls=cls))
    return out


# ----------------------------------------------------------------------------- modeled op costs

class _Call(torch.nn.Module):
    """``fn()`` as a module owning `params`: costmodel.saved_activation_bytes then leaves them out,
    as it leaves out a model's weights (they live anyway)."""

    def __init__(self, fn: Callable[[], object], params) -> None:
        super().__init__()
        self.fn = fn
        self.held = torch.nn.ParameterList(params)

    def forward(self, _x):
        return self.fn()


def op_costs(fn: Callable[[], torch.Tensor], leaves, grad_out: torch.Tensor, params=()) -> dict:
    """Modeled cost of one op call (fastmvit.costmodel; use meta tensors): {"fwd": Traffic of an
    inference call (no_grad), "forward": Traffic of the training forward (grad enabled),
    "backward": Traffic of torch.autograd.grad(out, leaves, grad_out) (no AccumulateGrad copies),
    "fwd+bwd": forward + backward, "saved_bytes": activation bytes saved for backward (each storage
    once, `params` excluded, inputs included when saved)}. grad_out is made by the caller, outside
    the counted region."""
    from fastmvit.costmodel import TrafficCounter, count_traffic, saved_activation_bytes
    with torch.no_grad():
        fwd = count_traffic(fn)
    with torch.enable_grad():
        with TrafficCounter() as forward:
            out = fn()
        with TrafficCounter() as backward:
            torch.autograd.grad(out, list(leaves), grad_out)
    del out
    saved = saved_activation_bytes(_Call(fn, params), grad_out)
    return {"fwd": fwd, "forward": forward.traffic, "backward": backward.traffic,
            "fwd+bwd": forward.traffic + backward.traffic, "saved_bytes": saved}


def op_call(fn: Callable[[], torch.Tensor], leaves, grad_out: torch.Tensor | None = None) -> Callable[[], None]:
    """What an op's speed test times: ``fn()`` under no_grad (an inference call), or with grad_out
    forward + ``torch.autograd.grad(out, leaves, grad_out)`` (a training call), as op_costs counts."""
    if grad_out is None:
        def call() -> None:
            with torch.no_grad():
                fn()
    else:
        def call() -> None:
            torch.autograd.grad(fn(), list(leaves), grad_out)
    return call


def modeled_passes(impls: dict[str, Callable], make_leaves: Callable[[], list]) -> dict[str, dict]:
    """{"fwd" | "fwd+bwd": {name: Traffic}}: each implementation ``impls[name](*leaves)`` counted by
    fastmvit.costmodel on meta copies of fresh leaves (``make_leaves()``, requiring grad), forward
    alone and forward + backward of ``ones``."""
    from fastmvit.costmodel import count_traffic, meta_like

    def fwd_bwd(impl):
        def run(*xs):
            out = impl(*xs)
            out.backward(torch.ones_like(out))
        return run

    def leaves():
        return [meta_like(t).requires_grad_(t.requires_grad) for t in make_leaves()]   # fresh: no .grad

    return {pass_: {name: count_traffic(fwd_bwd(impl) if backward else impl, *leaves())
                    for name, impl in impls.items()}
            for pass_, backward in (("fwd", False), ("fwd+bwd", True))}


def record_modeled_attention(record, shape, attention: dict, make_inputs: Callable, op: str, batch: int) -> None:
    """An attention suite's modeled test: bytes per call of ``attention["eager"]`` and
    ``attention["fastmvit"]`` (each called as ``impl(*inputs, shape)``, inputs from
    ``make_inputs(shape, dtype, device, requires_grad)``), forward and forward + backward, in
    bf16, recorded under ``op``; the fused call must move fewer bytes."""
    dtype = torch.bfloat16
    impls = {name: (lambda *xs, impl=attention[name]: impl(*xs, shape)) for name in ("eager", "fastmvit")}
    for pass_, counts in modeled_passes(impls, lambda: make_inputs(shape, dtype, "cpu", requires_grad=True)).items():
        for name, traffic in counts.items():
            record.modeled(suite="op", case=f"{shape.label} b{batch}", impl=name, pass_=pass_, dtype=dtype,
                           traffic=traffic, op=op, blocks=shape.blocks)
        assert counts["fastmvit"].bytes < counts["eager"].bytes, (pass_, counts)


def time_attention(measure, shape, fn: Callable, make_inputs: Callable, impl: str, pass_: str, batch: int,
                   device: str) -> None:
    """An attention suite's CUDA speed test: ``fn(*inputs, shape)`` in bf16, forward alone or with
    the backward of a random dout (op_call)."""
    inputs = make_inputs(shape, torch.bfloat16, device, requires_grad=pass_ == "fwd+bwd")
    dout = None if pass_ == "fwd" else \
        torch.randn(batch, shape.heads, shape.nq, shape.head_dim, dtype=torch.bfloat16, device=device)
    measure(op_call(lambda: fn(*inputs, shape), inputs, dout), suite="op", case=f"{shape.label} b{batch}",
            impl=impl, pass_=pass_, dtype=torch.bfloat16)


# ----------------------------------------------------------------------------- models

class Unavailable(Exception):
    """A contender that cannot run here; the message is the reason recorded in the results."""


@dataclass(frozen=True)
class VideoAttentionShape:
    """A distinct pooling-attention shape of a video model: grids (t, h, w), a class token, three
    tables (rel_len = (len_t, len_h, len_w)); blocks: how many blocks have it."""
    heads: int
    head_dim: int
    q_grid: tuple[int, int, int]
    kv_grid: tuple[int, int, int]
    rel_len: tuple[int, int, int]
    blocks: int = 1
    cls: bool = True

    @property
    def nq(self) -> int:
        return math.prod(self.q_grid) + self.cls

    @property
    def nk(self) -> int:
        return math.prod(self.kv_grid) + self.cls

    @property
    def label(self) -> str:
        return f"mvit_v2_s q{self.nq} k{self.nk} h{self.heads}"


def video_attention_shapes(arch: str = "small", clip=VIDEO_CLIP) -> list[VideoAttentionShape]:
    """The distinct attention shapes of the video arch at `clip`, in block order (mvit_v2_s at
    16 x 224 x 224: q/k tokens 25089/393, 6273/1569, 6273/393, 1569/1569, 1569/393, 393/1569,
    393/393; tests/test_reference_video.py lists them per block)."""
    from fastmvit.reference.config import block_specs, get_video_config
    out: dict[tuple, VideoAttentionShape] = {}
    for b in block_specs(get_video_config(arch), clip):
        key = (b.num_heads, tuple(b.q_size), tuple(b.kv_size))
        rel_len = tuple(2 * max(q, k) - 1 for q, k in zip(b.q_size, b.kv_size))   # the lengths the grids need
        if key in out:
            out[key] = VideoAttentionShape(**{**out[key].__dict__, "blocks": out[key].blocks + 1})
        else:
            out[key] = VideoAttentionShape(b.num_heads, b.head_dim, tuple(b.q_size), tuple(b.kv_size), rel_len)
    return list(out.values())


@dataclass(frozen=True)
class DetectionAttentionShape:
    """A distinct attention shape of the detection backbone: the pooled q and k maps (h, w), the
    windows' sides (q_window, kv_window; 0 for a global block), no class token; blocks: how many
    blocks have it. rel_len: the table lengths the windows (or, global, the maps) need."""
    heads: int
    head_dim: int
    q_grid: tuple[int, int]
    kv_grid: tuple[int, int]
    q_window: int
    kv_window: int
    blocks: int = 1

    @property
    def window(self):
        return ((self.q_window, self.kv_window)) if self.q_window else None

    @property
    def rel_len(self) -> tuple[int, int]:
        if self.q_window:
            return (2 * max(self.q_window, self.kv_window) - 1,) * 2
        return tuple(2 * max(q, k) - 1 for q, k in zip(self.q_grid, self.kv_grid))

    @property
    def nq(self) -> int:
        return math.prod(self.q_grid)

    @property
    def nk(self) -> int:
        return math.prod(self.kv_grid)

    @property
    def label(self) -> str:
        win = f" win{self.q_window}/{self.kv_window}" if self.q_window else " global"
        return f"det q{self.nq} k{self.nk} h{self.heads}{win}"


def detection_attention_shapes(arch: str = "tiny", img: int = 1024) -> list[DetectionAttentionShape]:
    """The distinct attention shapes of the backbone at img x img, in block order (tiny at 1024:
    25 windows of 3136 x 196 per image in stage 2, a global 16384 x 1024 block in stage 3, ...;
    tests/test_reference_detection.py lists them per block)."""
    from fastmvit.reference import MViTv2Backbone
    with torch.device("meta"):
        specs = MViTv2Backbone(arch, img_size=img).specs
    out: dict[tuple, DetectionAttentionShape] = {}
    for b in specs:
        key = (b.num_heads, tuple(b.q_size), tuple(b.kv_size), b.q_window, b.kv_window)
        if key in out:
            out[key] = DetectionAttentionShape(**{**out[key].__dict__, "blocks": out[key].blocks + 1})
        else:
            out[key] = DetectionAttentionShape(b.num_heads, b.head_dim, *key[1:])
    return list(out.values())


def model_class(impl: str):
    """The model class of an implementation ("reference" or "fastmvit"), or raise Unavailable."""
    if impl == "reference":
        try:
            from fastmvit.reference import MViTv2
        except ImportError as e:
            raise Unavailable(f"fastmvit.reference.MViTv2 is not available ({e})") from None
        return MViTv2
    if impl == "fastmvit":
        import fastmvit
        if not hasattr(fastmvit, "MViTv2"):
            raise Unavailable("fastmvit.MViTv2 (the optimized model) is not written yet")
        return fastmvit.MViTv2
    raise ValueError(f"unknown model implementation {impl!r}")


def model_backend(impl: str, device: str) -> str:
    """The fastmvit backend a model implementation runs under: the reference always uses plain
    torch; fastmvit uses Triton on CUDA and, on the meta device (cost model), the Triton custom
    ops' fake implementations; on the CPU it runs its torch path."""
    if impl.startswith("reference"):
        return "torch"
    return "triton" if device in ("cuda", "meta") else "torch"


def build_model(impl: str, arch: str, img: int, device: str, dtype: torch.dtype,
                num_classes: int = 1000, num_frames: int | None = None) -> torch.nn.Module:
    """An MViTv2 of the given implementation, random weights, on `device` in `dtype`.
    impl: "reference", "fastmvit", or either with "+compile" (torch.compile, CUDA only).
    num_frames: build the video model (MViTv2Video) for clips of that length."""
    base, _, compiled = impl.partition("+")
    cls = model_class(base)
    if num_frames is not None:
        import fastmvit
        cls = fastmvit.reference.MViTv2Video if base == "reference" else fastmvit.MViTv2Video
    if compiled and device != "cuda":
        raise Unavailable("torch.compile timings are taken on CUDA only (compiling on this CPU "
                          "machine would take most of the benchmark budget)")
    torch.manual_seed(0)
    with torch.device(device):
        kw = {} if num_frames is None else {"num_frames": num_frames}
        model = cls(arch, img_size=img, num_classes=num_classes, **kw)
    model = model.to(dtype)
    return torch.compile(model) if compiled else model


# ----------------------------------------------------------------------------- timing

def cuda_sync_timer() -> float:
    """A pytest-benchmark timer for CUDA: drains the GPU before reading the clock, so a timed
    region ends when its kernels end (and the previous region's work is never counted)."""
    torch.cuda.synchronize()
    return time.perf_counter()


def cuda_event_times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` calls of fn, from CUDA events (after one warm-up call)."""
    fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def median_iqr(values: list[float]) -> tuple[float, float]:
    """Median and inter-quartile range of a list of numbers."""
    if len(values) < 2:
        return (values[0] if values else math.nan), 0.0
    q = statistics.quantiles(values, n=4)
    return statistics.median(values), q[2] - q[0]


def peak_memory(fn: Callable[[], object], device: str) -> dict | None:
    """Peak CUDA memory of one call of fn: {"peak_bytes", "peak_over_start_bytes"}; None off CUDA."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_bytes": peak, "peak_over_start_bytes": peak - start}


def noise_threshold(median: float, iqr: float) -> float:
    """The relative change beyond which a timing counts as a regression: max(5%, 3 x IQR/median).

    5% is the run-to-run spread we accept on a quiet GPU; a noisy case (wide IQR) needs a larger
    change before it is flagged."""
    if not median or math.isnan(median):
        return 0.05
    return max(0.05, 3.0 * iqr / median)
