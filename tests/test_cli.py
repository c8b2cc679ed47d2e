"""The `fastmvit` command line: `fastmvit info` and `fastmvit convert`."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fastmvit.checkpoint import read_checkpoint
from fastmvit.cli import main
from test_checkpoint import (SMALL, SMALL_MLP, as_mmpretrain, as_official, assert_same_tensors, random_state_dict,
                             spec_shapes)


@pytest.fixture
def native():
    return random_state_dict(spec_shapes(**SMALL_MLP))


def test_info_text_and_json(tmp_path, capsys, native):
    path = tmp_path / "MViTv2_custom_in1k.pyth"
    torch.save(as_official(native), path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "official (wrapped in 'model_state')" in out
    assert "input size     48x64" in out
    assert "present but unused" in out
    n = sum(t.numel() for t in native.values())
    assert f"{n:,}" in out
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "official" and info["num_params"] == n and info["depths"] == [2, 1, 2]
    assert info["dim_change"] == "mlp" and info["num_classes"] == 7 and info["img_size"] == [48, 64]


@pytest.mark.parametrize("to", ["native", "official", "mmpretrain", "timm"])
def test_convert_round_trips(tmp_path, capsys, native, to):
    src = tmp_path / "in.pth"
    torch.save(as_mmpretrain(native, 3), src)
    out = tmp_path / f"out_{to}.pth"
    assert main(["convert", str(src), str(out), "--to", to, "--depths", "2,1,2"]) == 0
    assert f"{to} layout" in capsys.readouterr().out
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == to
    back = tmp_path / "back.safetensors"
    assert main(["convert", str(out), str(back), "--to", "native"]) == 0
    assert_same_tensors(read_checkpoint(back), native)


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    odd = tmp_path / "odd.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, odd)
    assert main(["convert", str(odd), str(tmp_path / "x.pth"), "--to", "timm"]) == 2
    assert "unknown checkpoint format" in capsys.readouterr().err
    good = tmp_path / "good.pth"
    torch.save(random_state_dict(spec_shapes(**SMALL)), good)
    assert main(["convert", str(good), str(tmp_path / "x.pth"), "--to", "timm", "--depths", "3,1"]) == 2
    assert "block 1 starts a stage" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["convert", str(good), str(tmp_path / "x.pth"), "--to", "onnx"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["convert", str(good), str(tmp_path / "x.pth"), "--to", "timm", "--depths", "1,two"])
    assert "--depths wants comma-separated integers" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    """`python -m fastmvit.cli` is what the `fastmvit` console script runs (fastmvit.cli:main)."""
    path = tmp_path / "m.pth"
    torch.save(random_state_dict(spec_shapes(**SMALL)), path)
    result = subprocess.run([sys.executable, "-m", "fastmvit.cli", "info", str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "native" in result.stdout and "64x64" in result.stdout
