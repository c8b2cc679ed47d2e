#!/usr/bin/env bash
# Create or reuse .venv and install fastmvit with the given extras (e.g. "test" or "bench").
#
# torch: a CUDA build that is already importable (system site-packages, e.g. a GPU container) is
# kept as it is. Otherwise, without a GPU we install the CPU build (torch==2.13.0, a local file on
# our machines); with a GPU, the default PyPI build (which is CUDA).
set -euo pipefail
EXTRAS="${1:-test}"
VENV="${VENV:-.venv}"
# The top of the supported range; `make test-floor` passes the floor (see the README).
TRITON_VERSION="${TRITON_VERSION:-3.9.0}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    echo "[bootstrap] creating $VENV"
    python3 -m venv --system-site-packages "$VENV"
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[bootstrap] GPU found, installing torch (CUDA build) from PyPI"
        "$PY" -m pip install -q torch
    else
        echo "[bootstrap] no GPU, installing the CPU build torch==2.13.0"
        "$PY" -m pip install -q torch==2.13.0
    fi
fi

if [ "$(uname -s)" = "Linux" ] && ! "$PY" -c "import triton" 2>/dev/null; then
    # CUDA builds of torch bring their own triton; the CPU build does not.
    echo "[bootstrap] installing triton==$TRITON_VERSION"
    "$PY" -m pip install -q "triton==$TRITON_VERSION"
fi
# A venv made for one triton must not silently test another (e.g. .venv-floor after an upgrade).
if [ -n "${REQUIRE_TRITON:-}" ]; then
    "$PY" -c "import sys, triton; v = triton.__version__; sys.exit(0 if v == '$TRITON_VERSION' else f'[bootstrap] $VENV has triton {v}, expected $TRITON_VERSION: make clean or remove $VENV')"
fi

STAMP="$VENV/.installed-$EXTRAS"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "[bootstrap] installing fastmvit[$EXTRAS] (editable)"
    "$PY" -m pip install -q -e ".[$EXTRAS]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    touch "$STAMP"
fi
"$PY" -c "import torch, fastmvit; print(f'[bootstrap] torch {torch.__version__}, cuda={torch.cuda.is_available()}, fastmvit {fastmvit.__version__}')"
