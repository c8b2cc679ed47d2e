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
