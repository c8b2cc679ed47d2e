"""The package installs under one import name and the backend switch behaves."""
import importlib
import os
import subprocess
import sys

import pytest
import torch

import fastmvit


def test_import_names(tmp_path):
    for name in ("fastmvit", "fastmvit.kernels", "fastmvit.reference"):
        importlib.import_module(name)
    # Nothing generic lands in site-packages: from outside the repository, only fastmvit imports.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for name, importable in (("fastmvit.kernels", True), ("kernels", False), ("reference", False)):
        result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        assert (result.returncode == 0) == importable, (name, result.stderr[-500:])


def test_use_backend_nests_and_restores():
    start = fastmvit.get_backend()
    with fastmvit.use_backend("torch"):
        assert fastmvit.get_backend() == "torch"
        with fastmvit.use_backend("triton"):
            assert fastmvit.get_backend() == "triton"
        assert fastmvit.get_backend() == "torch"
    assert fastmvit.get_backend() == start


def test_auto_backend_follows_the_device():
    from fastmvit.kernels import resolve_backend
    with fastmvit.use_backend("auto"):
        assert resolve_backend(torch.device("cpu")) == "torch"
        assert resolve_backend(torch.device("cuda")) == "triton"


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown fastmvit backend"):
        with fastmvit.use_backend("cudnn"):
            pass


def test_every_op_has_the_same_parts():
    """kernels/ops/<op>/: the same modules under the same names, reachable as modules (the functions
    are fastmvit.kernels.<op>), kernels named after their op, launchers forward / backward."""
    import fastmvit.kernels as K
    for op in K.KERNEL_OPS:
        package = importlib.import_module(f"fastmvit.kernels.ops.{op}")
        assert getattr(package, op) is getattr(K, op), op
        parts = {part: importlib.import_module(f"fastmvit.kernels.ops.{op}.{part}")
                 for part in ("torch_impl", "triton_impl", "op", "compile_cases")}
        assert callable(getattr(parts["torch_impl"], f"{op}_torch")), op
        assert callable(parts["compile_cases"].cases) and isinstance(parts["compile_cases"].EXPECTS_TENSOR_CORES, bool)
        impl = parts["triton_impl"]
        assert callable(impl.forward) and callable(impl.backward), op
        # @triton.jit objects (a JITFunction, or the interpreter's stand-in) wrap their function as .fn
        kernels = [name for name, value in vars(impl).items() if name.endswith("_kernel")
                   and callable(getattr(value, "fn", None))]
        assert kernels and all(name.startswith(f"{op}_") for name in kernels), (op, kernels)
