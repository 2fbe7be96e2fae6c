#!/usr/bin/env bash
# Runs the PyTorch reference (reference.py) in its own virtualenv, making it on first use.
#
#   benches/reference/run.sh mlp 512            # median ms per training step, 2 threads
#   benches/reference/run.sh unet 64 --steps 20
#   benches/reference/run.sh check EXPORT IO     # check_export.py: the mirror against an export
#
# TORCH_SPEC picks the wheel (default: torch from PyPI); TORCH_INDEX another index, e.g.
# https://download.pytorch.org/whl/cpu where it can be reached. PyPI's default Linux wheel
# brings the CUDA libraries: the virtualenv took 5.4 GB here (delete it with
# `rm -rf benches/reference/.venv` when done). REFERENCE_VENV puts it elsewhere.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${REFERENCE_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, safetensors" 2>/dev/null; then
    echo "making $venv with ${TORCH_SPEC:-torch} (once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} \
        "${TORCH_SPEC:-torch}" numpy safetensors >&2
fi
if [ "${1:-}" = check ]; then
    shift
    exec "$venv/bin/python" "$here/check_export.py" "$@"
fi
exec "$venv/bin/python" "$here/reference.py" "$@"
