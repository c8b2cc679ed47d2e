"""The GPU-compile harness: our kernels compile for sm_80 and sm_90 without spills, within shared
memory, and on tensor cores where they do a matmul (tools/gpu_compile.py).

The toy module (tests/_toy_kernels.py) proves the harness finds what it should; then every real
kernel module is compiled for both targets and must have no problems. Compiles run in a subprocess
per (module, target), with the interpreter off; the triton cache makes re-runs fast.
"""
from __future__ import annotations

import importlib
import os
import importlib.util
from pathlib import Path

import pytest

from tools.gpu_compile import (ARCHS, KERNEL_MODULES, SHARED_LIMIT, KernelReport, _count_dots,
                                          compile_cases, compile_only, count_sass, format_table)

pytestmark = pytest.mark.gpu_compile

TOY = str(Path(__file__).with_name("_toy_kernels.py"))


# --- KernelReport.problems() and the parsers, on hand-written inputs -------------------------

def _report(**fields) -> KernelReport:
    base = dict(kernel="k", target="sm_80", case="c", num_warps=4, num_stages=3, registers=64,
                shared=1024, static_shared=0, stack=0, local=0)
    return KernelReport(**{**base, **fields})


def test_problems_sound_kernel_has_none():
    assert _report().problems() == []
    assert _report(target="sm_90", expects_tensor_cores=True, tensor_core_dots=2, sass={"HGMMA": 4}).problems() == []


@pytest.mark.parametrize("fields, words", [
    (dict(stack=16), "spills"),
    (dict(local=8), "spills"),
    (dict(shared=SHARED_LIMIT[80] + 1), "shared memory"),
    (dict(target="sm_90", shared=SHARED_LIMIT[90] + 16), "shared memory"),
    (dict(registers=255, num_warps=16), "registers"),
    (dict(error="PTXASError: boom"), "compile failed"),
    (dict(kernel="<case>", error="ValueError: bad shape"), "case failed"),
    (dict(registers=None), "no resource usage"),
    # tensor cores expected: sm_80 needs HMMA (HGMMA does not exist there), sm_90 either
    (dict(expects_tensor_cores=True, tensor_core_dots=1), "tensor cores"),
    (dict(expects_tensor_cores=True, tensor_core_dots=1, sass={"HGMMA": 2}), "tensor cores"),
    (dict(target="sm_90", expects_tensor_cores=True, tensor_core_dots=1, sass={"LDGSTS": 3}), "tensor cores"),
])
def test_problems_found(fields, words):
    problems = _report(**fields).problems()
    assert any(words in p for p in problems), problems


def test_problems_tensor_cores_only_where_asked():
    assert _report(tensor_core_dots=1).problems() == []                            # module did not ask
    assert _report(expects_tensor_cores=True, dots=1, tensor_core_dots=0).problems() == []  # fp32 ieee dot
    assert _report(target="sm_90", expects_tensor_cores=True, tensor_core_dots=1, sass={"HMMA": 8}).problems() == []


def test_report_json_round_trip():
    r = _report(constexprs={"BLOCK_M": 64, "IS_CAUSAL": False}, sass={"HMMA": 3}, dtypes=["bf16"])
    assert KernelReport.from_json(r.to_json()) == r


def test_count_sass_and_dots():
    sass = """
        /*0f10*/                   HGMMA.64x64x16.F32 R24, gdesc[UR8].tnspB, R24 ;   /* 0x40e0 */
        /*0f70*/                   HGMMA.64x64x16.F32 R24, gdesc[UR8].tnspB, R24, gsb0 ;
        /*03a0*/              @P0  LDGSTS.E.BYPASS.128 [R4], desc[UR32][R8.64], P0 ;
        /*0080*/             @!PT  LDL.LU R18, [R1+0x2a8] ;
        /*00e0*/                   STL [R1+0x14b4], R14 ;
        /*0100*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0110*/                   FFMA R1, R2, R3, R4 ;
    """
    assert count_sass(sass) == {"HMMA": 1, "HGMMA": 2, "LDGSTS": 1, "LDL": 1, "STL": 1}
    ttir = """
      %a = tt.dot %x, %y, %z, inputPrecision = tf32 : tensor<64x32xbf16> * tensor<32x64xbf16> -> tensor<64x64xf32> loc(#l)
      %b = tt.dot %x, %y, %z, inputPrecision = ieee : tensor<64x32xf32> * tensor<32x64xf32> -> tensor<64x64xf32> loc(#l)
      %c = tt.dot %x, %y, %z : tensor<64x32xf32> * tensor<32x64xf32> -> tensor<64x64xf32> loc(#l)
      %d = tt.dot %x, %y, %z, inputPrecision = tf32 : tensor<64x32xf32> * tensor<32x64xf32> -> tensor<64x64xf32> loc(#l)
      %e = tt.dot %x, %y, %z : tensor<64x32xf16> * tensor<32x64xf16> -> tensor<64x64xf32> loc(#l)
    """
    # %c: IEEE is tt.dot's default precision and is not printed (what triton 3.9 emits for
    # tl.dot(..., input_precision="ieee")); a half dot always may use tensor cores.
    assert _count_dots(ttir) == (5, 3)


def test_compile_only_refuses_the_interpreter():
    from triton import knobs
    if not knobs.runtime.interpret:
        pytest.skip("this session runs without the interpreter")
    with pytest.raises(RuntimeError, match="interpreter"):
        with compile_only(90):
            pass


def test_compile_only_rejects_unknown_arch():
    with pytest.raises(ValueError, match="arch"):
        with compile_only(75):
            pass


# --- The toy module: the harness finds what it should ----------------------------------------

@pytest.fixture(scope="module", params=ARCHS, ids=lambda a: f"sm_{a}")
def toy_reports(request) -> tuple[int, list[KernelReport]]:
    return request.param, compile_cases(TOY, request.param)


def _by_kernel(reports, name):
    return [r for r in reports if r.kernel == name]


def test_toy_matmul_configs(toy_reports):
    import _toy_kernels as toy  # tests/ is on sys.path (rootdir conftest)
    arch, reports = toy_reports
    table = format_table(reports)
    matmuls = _by_kernel(reports, "_toy_matmul_kernel")
    blocks = {(r.constexprs["BLOCK_M"], r.constexprs["BLOCK_N"], r.constexprs["BLOCK_K"]): r for r in matmuls}
    key = lambda cfg: (cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"])
    # every config the module can launch was compiled; the pruned one was not
    expected = [key(c) for c in toy.SOUND_CONFIGS + [toy.OVER_SHARED_CONFIG, toy.FAILING_CONFIG]]
    assert sorted(blocks) == sorted(expected), table
    assert key(toy.PRUNED_CONFIG) not in blocks, table
    assert all(r.autotune for r in matmuls), table
    for cfg in toy.SOUND_CONFIGS:
        r = blocks[key(cfg)]
        assert (r.num_warps, r.num_stages) == (cfg.num_warps, cfg.num_stages), table
        assert r.registers > 0 and r.shared > 0 and r.expects_tensor_cores and r.tensor_core_dots == 1, table
        assert r.hmma > 0 if arch == 80 else r.hgmma > 0, table
        assert r.problems() == [], table
    over = blocks[key(toy.OVER_SHARED_CONFIG)]
    assert over.shared > SHARED_LIMIT[arch], table
    assert any("shared memory" in p for p in over.problems()), table
    failed = blocks[key(toy.FAILING_CONFIG)]
    assert failed.error and "BLOCK_K >= 16" in failed.error, table
    assert any("compile failed" in p for p in failed.problems()), table


def test_toy_elementwise_and_spill(toy_reports):
    arch, reports = toy_reports
    table = format_table(reports)
    (scale_add,) = _by_kernel(reports, "_toy_scale_add_kernel")
    assert scale_add.target == f"sm_{arch}" and scale_add.case == "scale_add bf16 1000", table
    assert scale_add.dtypes == ["bf16"] and scale_add.constexprs == {"BLOCK": 1024}, table
    assert scale_add.registers > 0 and scale_add.dots == 0, table
    assert scale_add.sass is None, table  # no tensor-core dot: SASS not dumped (the costly part)
    assert scale_add.problems() == [], table  # no dot: no tensor cores expected
    (normalize,) = _by_kernel(reports, "_toy_normalize_kernel")
    assert normalize.num_warps == 1 and normalize.stack > 0, table
    assert any("spills" in p for p in normalize.problems()), table
    assert not [r for r in reports if r.kernel == "<case>"], table


# --- The real kernels: no problems on either target ------------------------------------------

# The suite compiles each module's representative subset (every kernel and config, fp16 and bf16,
# both head dims, one grid each) to stay within `make test`'s budget on a cold triton cache;
# FASTMVIT_GPU_COMPILE=all compiles every MViTv2 shape (scripts/kernel_table.py does too).
FULL = os.environ.get("FASTMVIT_GPU_COMPILE", "sample").strip().lower() == "all"


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_kernels_compile_clean(module, arch):
    assert hasattr(importlib.import_module(module), "cases"), f"{module} has no cases()"
    reports = compile_cases(module, arch, sample=not FULL)
    table = format_table(reports)
    assert reports, f"{module}: cases() compiled nothing for sm_{arch}"
    problems = [f"{r.kernel} [{r.case}] {r.constexprs}: {p}" for r in reports for p in r.problems()]
    assert not problems, f"{module} on sm_{arch}:\n" + "\n".join(problems) + "\n\n" + table
