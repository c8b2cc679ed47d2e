"""Compile our Triton kernels for a real GPU (sm_80 / sm_90) on a machine without one, and check them.

There is no GPU on our CI machines, so the interpreter proves the numerics and this module proves
the GPU path: it compiles exactly what the real launch path would launch (same specialisations,
same autotune configs, same constexprs) for Ampere (sm_80) or Hopper (sm_90), reads the cubins
with the tools shipped in the triton wheel, and reports registers, shared memory, spills and
tensor-core instructions per kernel.

How it works (checked on triton 3.6 and 3.9; the interpreter-free compile path of docs/design.md,
"Checking the GPU path without a GPU"):

- a stand-in CUDA driver (device 0, stream 0, target ``GPUTarget("cuda", arch, 32)``) becomes the
  active driver, so every ``@triton.jit`` launch specialises and compiles for that target;
- ``JITFunction.run`` is made to compile without launching (``warmup=True``): no GPU memory is
  touched, outputs are never written, CPU tensors are fine as pointer arguments (their
  ``data_ptr`` alignment drives specialisation as on a GPU);
- the autotuner's benchmarker just calls each config once, so every config compiles. Its pruning
  (``prune_configs_by``: ``early_config_prune``, ``perf_model``/``top_k``) is kept: it is part of
  what the op can launch. Configs that fail to compile (CompileTimeAssertionFailure, PTXASError,
  OutOfResources) are recorded as problems instead of being silently skipped, and a config whose
  shared memory exceeds the target's limit raises OutOfResources inside the autotuner exactly as a
  real launch would (so the autotuner moves on, as on a GPU) and is recorded as a problem;
- triton caches the target per device on first launch, so one target per process:
  `compile_cases` runs each (module, arch) in a fresh subprocess with the interpreter off.

The contract with a compile-cases module (e.g. ``fastmvit.kernels.ops.pool_attention.compile_cases``)
-----------------------------------------------------------------------------------------------------
The module defines::

    def cases(sample: bool = False) -> Iterable[tuple[str, Callable[[], None]]]:
        '''(label, thunk) pairs; each thunk calls the module's internal Triton launchers directly,
        with CPU tensors (torch.empty is enough: nothing is read or written), at the real MViTv2
        shapes (e.g. "fwd bf16 hd96 3136x196").'''

    EXPECTS_TENSOR_CORES = True   # optional, default False

Labels should be unique within the module. Build tensors once outside the thunks where convenient.

Tensor cores: when the module sets ``EXPECTS_TENSOR_CORES = True``, every compiled
kernel that contains a ``tl.dot`` which can use tensor cores (any ``tl.dot`` except float32 operands
with ``input_precision="ieee"``, which the TTIR shows as a dot without an ``inputPrecision``
attribute; found in the kernel's TTIR, so helpers called from the kernel count) must show HMMA in its SASS on sm_80, and HMMA or HGMMA on sm_90. Kernels without such a dot
are not checked. So: pool_attention sets it to True, pool_qkv leaves it out.

Use
---
    from tools.gpu_compile import compile_cases, format_table
    reports = compile_cases("fastmvit.kernels.ops.pool_attention.compile_cases", 90)
    print(format_table(reports))
    assert not [p for r in reports for p in r.problems()]

By hand, from the repository root: ``python -m tools.gpu_compile fastmvit.kernels.ops.pool_qkv.compile_cases --arch 80
[--json [OUT]]``
(prints the markdown table, or the reports as JSON to stdout / OUT). MODULE may also be a path to a
.py file. In-process use of `compile_only` needs ``TRITON_INTERPRET`` unset before triton is
imported, and allows a single target per process.

Compiles take seconds each; the triton cache (~/.triton/cache, or TRITON_CACHE_DIR) makes re-runs
fast and is left on. cuobjdump is run once per distinct cubin, and its answers are kept by kernel
hash next to the triton cache. Dumping SASS costs ~0.7 s of CPU per kernel (a fixed start-up cost
of cuobjdump), so by default only kernels with a tensor-core tl.dot are dumped (``--sass all`` for
every kernel); registers, shared memory and spills (``--dump-resource-usage``, ~10 ms) are always read.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import importlib
import inspect
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

ARCHS = (80, 90)
# Largest dynamic shared memory per block (bytes): cudaDevAttrMaxSharedMemoryPerBlockOptin on
# A100 (sm_80) and H100 (sm_90). Triton's launch compares the kernel's `shared` with it.
SHARED_LIMIT = {80: 166912, 90: 232448}
REGISTERS_PER_BLOCK = 65536  # a block's threads share one SM's register file
# SASS opcodes worth counting: tensor cores (HMMA: mma.sync, HGMMA: wgmma), async copies (LDGSTS:
# cp.async, UTMALDG/UTMASTG: TMA), shared-memory matrix loads (LDSM), local memory (LDL/STL:
# spill traffic).
SASS_OPCODES = ("HMMA", "HGMMA", "LDGSTS", "UTMALDG", "UTMASTG", "LDSM", "LDL", "STL")
# The kernel modules that must compile clean (tests/test_gpu_compile.py, scripts/kernel_table.py).
def _kernel_modules() -> tuple[str, ...]:
    from fastmvit.kernels import KERNEL_OPS   # imports no triton
    return tuple(f"fastmvit.kernels.ops.{op}.compile_cases" for op in KERNEL_OPS)


KERNEL_MODULES = _kernel_modules()
CASES_FUNCTION = "cases"
EXPECTS_TENSOR_CORES_FLAG = "EXPECTS_TENSOR_CORES"


def target_name(arch: int) -> str:
    return f"sm_{arch}"


@dataclasses.dataclass
class KernelReport:
    """One compiled kernel (one specialisation / autotune config) in one case, for one target.

    `shared` is the dynamic shared memory triton launches the kernel with (bytes, what the target's
    limit applies to); `static_shared` the static part cuobjdump reports. `registers` are per
    thread; `stack` / `local` bytes per thread (ptxas spills show up as STACK). `sass` counts
    the SASS_OPCODES; it is None where the SASS was not dumped (by default only kernels with a
    tensor-core tl.dot are: a dump costs ~0.7 s of CPU per kernel, whatever its size). A kernel that failed to compile (or a case that raised) has `error` set and
    no resource numbers. `kernel` is "<case>" for an error raised by the case outside any launch.
    """
    kernel: str
    target: str
    case: str
    constexprs: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_warps: int | None = None
    num_stages: int | None = None
    dtypes: list[str] = dataclasses.field(default_factory=list)  # element types of the pointer args
    registers: int | None = None
    shared: int | None = None
    static_shared: int | None = None
    stack: int | None = None
    local: int | None = None
    sass: dict[str, int] | None = None
    dots: int = 0                 # tl.dot ops in the TTIR
    tensor_core_dots: int = 0     # those that can use tensor cores (not float32 with ieee precision)
    expects_tensor_cores: bool = False  # the module asked for tensor cores (see module docstring)
    autotune: bool = False        # compiled as one of an autotuner's configs
    error: str | None = None
    hash: str | None = None
    compile_s: float = 0.0        # wall time of the launch that compiled it (~0.01 s from the triton cache)
    cubin: str | None = None      # path in the triton cache (not serialised into tables)

    @property
    def arch(self) -> int:
        return int(self.target.removeprefix("sm_"))

    @property
    def hmma(self) -> int:
        return (self.sass or {}).get("HMMA", 0)

    @property
    def hgmma(self) -> int:
        return (self.sass or {}).get("HGMMA", 0)

    def problems(self) -> list[str]:
        """What would go wrong, or run slow, on the target: empty when the kernel is sound."""
        if self.error is not None:
            what = "case failed" if self.kernel == "<case>" else "compile failed"
            return [f"{what}: {self.error}"]
        out = []
        if self.registers is None:
            out.append("no resource usage (cuobjdump found no function)")
        if self.stack or self.local:
            out.append(f"spills: STACK {self.stack} B, LOCAL {self.local} B per thread")
        limit = SHARED_LIMIT.get(self.arch)
        if limit is not None and self.shared is not None and self.shared > limit:
            out.append(f"shared memory {self.shared} B over the {self.target} limit {limit} B "
                       "(a launch raises OutOfResources; the autotuner would skip this config)")
        if self.registers and self.num_warps and self.registers * self.num_warps * 32 > REGISTERS_PER_BLOCK:
            out.append(f"{self.registers} registers x {self.num_warps * 32} threads exceed the "
                       f"{REGISTERS_PER_BLOCK} registers of an SM (launch fails)")
        if self.expects_tensor_cores and self.tensor_core_dots:
            if self.sass is None:
                out.append("tensor cores expected but the SASS was not read")
            elif self.arch >= 90 and not (self.hmma or self.hgmma):
                out.append(f"tl.dot without tensor cores: no HMMA or HGMMA on {self.target}")
            elif self.arch < 90 and not self.hmma:
                out.append(f"tl.dot without tensor cores: no HMMA on {self.target}")
        return out

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "KernelReport":
        return cls(**data)


# ---------------------------------------------------------------------------------------------
# compile_only: the stand-in driver and the compile-without-launch patches
# ---------------------------------------------------------------------------------------------

_recorder: contextvars.ContextVar["CompileRecorder | None"] = contextvars.ContextVar("gpu_compile_recorder", default=None)
_in_autotune: contextvars.ContextVar[bool] = contextvars.ContextVar("gpu_compile_in_autotune", default=False)
_process_arch: int | None = None  # triton caches the target per device: one arch per process


def _compile_only_benchmarker(kernel_call: Callable[[], None], quantiles: Sequence[float] | None = None,
                              **_: Any) -> list[float]:
    """The autotuner's `do_bench` in compile-only mode: call (= compile) the config once."""
    token = _in_autotune.set(True)
    try:
        kernel_call()
    finally:
        _in_autotune.reset(token)
    return [0.0] * len(quantiles) if quantiles else 0.0


def _stand_in_driver(arch: int):
    """A CUDA driver that reports device 0, stream 0 and the given target, and never touches libcuda."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver

    class CompileOnlyCudaDriver(CudaDriver):
        def __init__(self) -> None:  # CudaDriver.__init__ builds a launcher against libcuda: skip it
            self.utils = None
            self.launcher_cls = None

        @staticmethod
        def is_active() -> bool:
            return True

        def get_current_device(self) -> int:
            return 0

        def set_current_device(self, device: int) -> None:
            pass

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

        def get_device_capability(self, device: int | None = None) -> tuple[int, int]:
            return divmod(arch, 10)

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_active_torch_device(self):
            import torch
            return torch.device("cpu")

        def get_benchmarker(self):
            return _compile_only_benchmarker

    return CompileOnlyCudaDriver()


class CompileRecorder:
    """Collects a KernelReport for every kernel compiled inside `compile_only`."""

    def __init__(self, arch: int, sass: str = "auto") -> None:
        if sass not in ("auto", "all"):
            raise ValueError(f"sass must be 'auto' (kernels with a tensor-core tl.dot) or 'all', got {sass!r}")
        self.arch = arch
        self.sass = sass
        self.reports: list[KernelReport] = []
        self._case = ""
        self._expects_tensor_cores = False
        self._seen: set[tuple[str, str]] = set()
        self.compile_seconds = 0.0  # wall time inside launches (compiles, or triton cache reads)  # (case, kernel hash): the autotuner's final launch repeats a config

    @contextlib.contextmanager
    def case(self, label: str, expects_tensor_cores: bool = False) -> Iterator[None]:
        """Label the kernels compiled inside; a failure of the case is recorded, not raised."""
        self._case, self._expects_tensor_cores = label, expects_tensor_cores
        try:
            yield
        except Exception as e:  # noqa: BLE001 - a broken case is a finding, the others still compile
            self.reports.append(KernelReport(kernel="<case>", target=target_name(self.arch), case=label,
                                             error=_describe(e)))
        finally:
            self._case, self._expects_tensor_cores = "", False

    def _base(self, fn, kwargs: dict[str, Any]) -> KernelReport:
        constexpr_names = [p.name for p in fn.params if p.is_constexpr]
        return KernelReport(
            kernel=fn.fn.__name__, target=target_name(self.arch), case=self._case,
            constexprs={k: _jsonable(kwargs[k]) for k in constexpr_names if k in kwargs},
            num_warps=kwargs.get("num_warps"), num_stages=kwargs.get("num_stages"),
            expects_tensor_cores=self._expects_tensor_cores, autotune=_in_autotune.get())

    def record_failure(self, fn, kwargs: dict[str, Any], error: BaseException) -> None:
        report = self._base(fn, kwargs)
        report.error = _describe(error)
        self.reports.append(report)

    def record(self, fn, kernel, seconds: float = 0.0) -> KernelReport | None:
        self.compile_seconds += seconds
        key = (self._case, kernel.hash)
        if key in self._seen:
            return None
        self._seen.add(key)
        meta = kernel.metadata
        report = self._base(fn, {})
        constexpr_names = {p.num: p.name for p in fn.params if p.is_constexpr}
        report.constexprs = {constexpr_names[path[0]]: _jsonable(value)
                             for path, value in kernel.src.constants.items()
                             if len(path) == 1 and path[0] in constexpr_names}
        report.num_warps, report.num_stages, report.shared = meta.num_warps, meta.num_stages, meta.shared
        report.dtypes = sorted({t[1:] for t in kernel.src.signature.values()
                                if isinstance(t, str) and t.startswith("*")})
        report.hash = kernel.hash
        report.compile_s = round(seconds, 3)
        report.cubin = next((p for name, p in kernel.metadata_group.items() if name.endswith(".cubin")), None)
        ttir = kernel.asm.get("ttir", "")
        report.dots, report.tensor_core_dots = _count_dots(ttir)
        self.reports.append(report)
        return report

    def read_cubins(self) -> None:
        """Fill registers, stack, local, static shared and SASS counts from cuobjdump (once per cubin,
        two at a time; results are cached by kernel hash, see read_cubin_cached)."""
        todo: dict[str, tuple] = {}
        for r in self.reports:
            if r.cubin is not None:
                want_sass = self.sass == "all" or r.tensor_core_dots > 0 or todo.get(r.cubin, (0, 0, False))[2]
                todo[r.cubin] = (r.kernel, r.hash, want_sass)
        with ThreadPoolExecutor(max_workers=2) as pool:
            done = dict(zip(todo, pool.map(lambda item: read_cubin_cached(item[0], *item[1]), todo.items())))
        for report in self.reports:
            if report.cubin is not None:
                for name, value in done[report.cubin].items():
                    setattr(report, name, value)


@contextlib.contextmanager
def compile_only(arch: int, sass: str = "auto") -> Iterator[CompileRecorder]:
    """Inside: every Triton launch compiles for sm_`arch` (80 or 90) and does not run.

    `sass`: "auto" dumps the SASS (HMMA/HGMMA/... counts) of kernels with a tensor-core tl.dot
    only, "all" of every kernel. Registers, shared memory and spills are always read.

    Yields a CompileRecorder; label kernels with ``recorder.case(label)``. On exit the cubins are
    read, so ``recorder.reports`` is complete. Needs TRITON_INTERPRET unset (a fresh process:
    `compile_cases` does that for you); one arch per process.
    """
    global _process_arch
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS} (sm_80 Ampere, sm_90 Hopper), got {arch!r}")
    from triton import knobs
    if knobs.runtime.interpret:
        raise RuntimeError("compile_only needs Triton's interpreter off (TRITON_INTERPRET unset before "
                           "triton is imported); use compile_cases(), which runs a fresh subprocess")
    if _process_arch not in (None, arch):
        raise RuntimeError(f"this process already compiled for sm_{_process_arch}; triton caches the "
                           f"target per device, so sm_{arch} needs a fresh process (compile_cases)")
    if _recorder.get() is not None:
        raise RuntimeError("compile_only is already active")
    _process_arch = arch
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

    from triton.runtime import driver
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.errors import OutOfResources
    from triton.runtime.jit import JITFunction

    recorder = CompileRecorder(arch, sass)
    original_run = JITFunction.run
    original_autotune_run = Autotuner.run
    original_do_bench = Autotuner.__dict__["do_bench"]

    def run(self, *args, grid, warmup, **kwargs):
        rec = _recorder.get()
        if rec is None:  # another thread, or after exit
            return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)
        start = time.perf_counter()
        try:
            kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as e:
            rec.record_failure(self, kwargs, e)
            raise
        if kernel is None:
            return None
        rec.record(self, kernel, time.perf_counter() - start)
        limit = SHARED_LIMIT[arch]
        if _in_autotune.get() and kernel.metadata.shared > limit:
            raise OutOfResources(kernel.metadata.shared, limit, "shared memory")  # as a real launch would
        return kernel

    def autotune_run(self, *args, **kwargs):
        # Benchmark (= compile) every config at every call: no in-memory or on-disk tuning cache.
        self.cache.clear()
        cache_results, self.cache_results = self.cache_results, False
        try:
            return original_autotune_run(self, *args, **kwargs)
        finally:
            self.cache_results = cache_results

    previous_driver = driver._active
    token = _recorder.set(recorder)
    driver.set_active(_stand_in_driver(arch))
    JITFunction.run = run
    Autotuner.run = autotune_run
    # A property on the class wins over the cached_property value an Autotuner may already hold,
    # and over a user-supplied do_bench: in compile-only mode every config is just compiled.
    Autotuner.do_bench = property(lambda self: _compile_only_benchmarker)
    try:
        yield recorder
    finally:
        Autotuner.do_bench = original_do_bench
        Autotuner.run = original_autotune_run
        JITFunction.run = original_run
        driver._active = previous_driver
        _recorder.reset(token)
        recorder.read_cubins()


# ---------------------------------------------------------------------------------------------
# Reading cubins
# ---------------------------------------------------------------------------------------------

_RESOURCE = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")
_DOT = re.compile(r"= tt\.dot (?:.*?inputPrecision = (\w+))?.*?: tensor<[0-9x]+x(\w+)>")


def cuobjdump() -> str:
    from triton import knobs
    return knobs.nvidia.cuobjdump.path


_READ_VERSION = 2  # bump when read_cubin's output changes


def read_cubin_cached(path: str, kernel: str, kernel_hash: str | None, sass: bool = True) -> dict[str, Any]:
    """read_cubin, remembered in <triton cache dir>/fastmvit-gpu-compile/<hash>.json.

    A kernel's hash names its compile (source, options, target), so its cubin never changes. Dumping
    the SASS of a big kernel takes about a second; with this, a warm re-run reads no cubin.
    """
    if kernel_hash is None:
        return read_cubin(path, kernel, sass)
    from triton import knobs
    folder = Path(knobs.cache.dir) / "fastmvit-gpu-compile"
    name = f"{kernel_hash}-{kernel}-v{_READ_VERSION}"
    cache = folder / f"{name}-sass.json" if sass else folder / f"{name}.json"
    for candidate in (folder / f"{name}-sass.json", cache):  # a SASS read answers both
        try:
            return json.loads(candidate.read_text())
        except (OSError, ValueError):
            pass
    out = read_cubin(path, kernel, sass)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out))
        os.replace(tmp, cache)  # atomic: concurrent runs never read half a file
    except OSError:
        pass
    return out


def read_cubin(path: str, kernel: str, sass: bool = True) -> dict[str, Any]:
    """Resource usage (and, with `sass`, SASS opcode counts) of `kernel` in the cubin at `path`."""
    tool = cuobjdump()
    usage = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True, check=True).stdout
    out: dict[str, Any] = {}
    for name, reg, stack, shared, local in _RESOURCE.findall(usage):
        if name == kernel or not out:
            out = dict(registers=int(reg), stack=int(stack), static_shared=int(shared), local=int(local))
    if sass:
        dump = subprocess.run([tool, "--dump-sass", path], capture_output=True, text=True, check=True).stdout
        out["sass"] = count_sass(dump)
    return out


def count_sass(sass: str) -> dict[str, int]:
    """How many times each of SASS_OPCODES appears (opcode before the first '.', predicates skipped)."""
    counts = Counter(m.group(1) for m in _SASS_LINE.finditer(sass))
    return {op: counts[op] for op in SASS_OPCODES if counts[op]}


def _count_dots(ttir: str) -> tuple[int, int]:
    """(tl.dot ops, those that may use tensor cores) in a kernel's TTIR."""
    dots = _DOT.findall(ttir)
    # IEEE is tt.dot's default inputPrecision, so the TTIR prints the attribute only for tf32 /
    # tf32x3: a float32 dot without it is an exact one (tl.dot's own default is tf32, printed).
    exact_fp32 = sum(1 for precision, elem in dots if (precision or "ieee") == "ieee" and elem == "f32")
    return len(dots), len(dots) - exact_fp32


def _describe(error: BaseException) -> str:
    """One line: the error's type and message (a CompilationError's message, with the source line
    that raised it, not the whole excerpt of the kernel)."""
    text = str(error)
    if getattr(error, "error_message", None) is not None and getattr(error, "node", None) is not None:
        line = getattr(error.node, "lineno", "?")
        text = f"line {line} of the kernel: {error.error_message}"
    text = " ".join(text.split())
    return f"{type(error).__name__}: {text[:400]}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    value = getattr(value, "value", value)  # tl.constexpr
    return value if isinstance(value, (bool, int, float, str)) else str(value)


# ---------------------------------------------------------------------------------------------
# Running a module's cases (in this process, or in a fresh subprocess)
# ---------------------------------------------------------------------------------------------

def import_kernel_module(module: str):
    """Import a module by dotted name, or a .py file by path."""
    if module.endswith(".py"):
        path = Path(module).resolve()
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = mod
        spec.loader.exec_module(mod)
        return mod
    return importlib.import_module(module)


class NoCompileCases(RuntimeError):
    """The module has no cases() (yet)."""


_EXIT_NO_CASES = 3


def run_cases_here(module: str, arch: int, sass: str = "auto", sample: bool = False) -> list[KernelReport]:
    """Compile every case of `module` for sm_`arch` in this process (needs the interpreter off).

    sample: ask the module for its representative subset (``cases(sample=True)``, where
    the function takes that argument): every kernel and config, fp16 and bf16, each head dim, but
    one grid per combination instead of every MViTv2 shape. The test suite uses it to stay within
    its time budget on a cold triton cache; the full set is for scripts/kernel_table.py."""
    mod = import_kernel_module(module)
    cases = getattr(mod, CASES_FUNCTION, None)
    if cases is None:
        raise NoCompileCases(f"{module} has no {CASES_FUNCTION}() (see tools/gpu_compile.py)")
    expects = bool(getattr(mod, EXPECTS_TENSOR_CORES_FLAG, False))
    takes_sample = "sample" in inspect.signature(cases).parameters
    with compile_only(arch, sass) as recorder:
        for label, thunk in (cases(sample=True) if sample and takes_sample else cases()):
            with recorder.case(label, expects_tensor_cores=expects):
                thunk()
    return recorder.reports


def compile_cases(module: str, arch: int, sass: str = "auto", timeout: float = 900.0,
                  sample: bool = False) -> list[KernelReport]:
    """Compile every case of `module` (dotted name or .py path) for sm_`arch` in a fresh subprocess
    (only its representative subset with `sample`: see run_cases_here).

    The subprocess runs with the interpreter off and TRITON_DEFAULT_FP_FUSION=1; the triton cache is
    kept, so re-runs are fast. Raises RuntimeError (with the subprocess's stderr) if it fails as a
    whole (NoCompileCases when the module has no cases()); per-case failures come back as
    reports with `error` set.
    """
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    # The subprocess must import the same fastmvit and tools (and, for a path, the same file) as we
    # do: the repository root on its path (an uninstalled checkout maps kernels/ itself).
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="gpu_compile_") as tmp:
        out = os.path.join(tmp, "reports.json")
        cmd = [sys.executable, "-m", "tools.gpu_compile", module, "--arch", str(arch), "--sass", sass, "--json", out]
        if sample:
            cmd.append("--sample")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == _EXIT_NO_CASES:
            raise NoCompileCases(proc.stderr.strip().splitlines()[-1])
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"compiling {module} for sm_{arch} failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-4000:]}")
        with open(out) as f:
            return [KernelReport.from_json(r) for r in json.load(f)]


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

def _blocks(constexprs: dict[str, Any]) -> str:
    return " ".join(f"{k.removeprefix('BLOCK_')}={v}" for k, v in constexprs.items() if k.startswith("BLOCK"))


def format_table(reports: Iterable[KernelReport], problems: bool = True) -> str:
    """A markdown table: one row per compiled kernel (and per failure)."""
    header = ["kernel", "target", "case", "dtypes", "BLOCK", "warps", "stages", "regs", "shared B",
              "STACK/LOCAL", "HMMA/HGMMA", "LDGSTS/UTMALDG"]
    if problems:
        header.append("problems")
    rows = []
    for r in reports:
        row = [r.kernel, r.target, r.case, ",".join(r.dtypes), _blocks(r.constexprs),
               _cell(r.num_warps), _cell(r.num_stages), _cell(r.registers), _cell(r.shared),
               f"{_cell(r.stack)}/{_cell(r.local)}", _pair(r.sass, "HMMA", "HGMMA"),
               _pair(r.sass, "LDGSTS", "UTMALDG")]
        if problems:
            row.append("; ".join(r.problems()).replace("|", "/") or "-")
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pair(counts: dict[str, int] | None, a: str, b: str) -> str:
    return "-" if counts is None else f"{counts.get(a, 0)}/{counts.get(b, 0)}"


def _cell(value: Any) -> str:
    return "?" if value is None else str(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.gpu_compile",
        description="Compile an op's compile_cases.cases() for sm_80/sm_90 without a GPU.")
    parser.add_argument("module", help="dotted module name (fastmvit.kernels.ops.pool_qkv.compile_cases) or a .py path")
    parser.add_argument("--arch", type=int, choices=ARCHS, default=90)
    parser.add_argument("--sass", choices=("auto", "all"), default="auto",
                        help="dump the SASS of kernels with a tensor-core tl.dot (auto) or of all")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="OUT",
                        help="write the reports as JSON to OUT (stdout when OUT is omitted)")
    parser.add_argument("--sample", action="store_true",
                        help="only the module's representative subset of cases (what the tests compile)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes"):
        print("gpu_compile: unset TRITON_INTERPRET (compiling needs the interpreter off)", file=sys.stderr)
        return 2
    try:
        reports = run_cases_here(args.module, args.arch, args.sass, args.sample)
    except NoCompileCases as e:
        print(f"gpu_compile: {e}", file=sys.stderr)
        return _EXIT_NO_CASES
    distinct = {r.hash for r in reports if r.hash}
    print(f"gpu_compile: {args.module} sm_{args.arch}: {len(reports)} reports, {len(distinct)} distinct "
          f"kernels, {sum(r.compile_s for r in reports):.1f} s in compiles", file=sys.stderr)
    if args.json is None:
        print(format_table(reports))
        return 0
    data = json.dumps([r.to_json() for r in reports], indent=1)
    if args.json == "-":
        print(data)
    else:
        with open(args.json, "w") as f:
            f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
