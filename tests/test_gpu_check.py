"""`make gpu-check` without a GPU: it collects its CUDA tests and benchmark cases, says there is no
CUDA and exits with its own code (3), so a broken CUDA test shows up on a CPU machine."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what a machine without CUDA does")


def gpu_check(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    env["GPU_CHECK_OUT"] = str(tmp_path / "out")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_dry_run_collects_the_cuda_tests_and_exits_3(tmp_path):
    proc = gpu_check(tmp_path)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no CUDA" in proc.stdout
    found = re.search(r"collected (\d+) CUDA tests and (\d+) benchmark cases", proc.stdout)
    assert found, proc.stdout[-2000:]
    assert int(found.group(1)) >= 50 and int(found.group(2)) >= 20, found.group(0)


def test_dry_run_fails_on_a_broken_cuda_test(tmp_path):
    broken = tmp_path / "tests"
    broken.mkdir()
    (broken / "test_broken_cuda.py").write_text("import pytest\n\n@pytest.mark.cuda\ndef test_x(:\n    pass\n")
    proc = gpu_check(tmp_path, "--tests", str(broken))
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "collection FAILED" in proc.stdout


def test_junit_counts(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite tests="7" failures="2" errors="1" skipped="1"/></testsuites>')
    assert gpu.junit_counts(xml) == {"passed": 3, "failed": 2, "errors": 1, "skipped": 1}
    assert gpu.junit_counts(tmp_path / "missing.xml") == {}
