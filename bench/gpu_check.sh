#!/usr/bin/env bash
# The CUDA checks of the expert service, on a machine with an NVIDIA GPU:
#  1. the equality tests on the GPU: shared-prefix scoring against whole sequences (float32,
#     1e-4), the scorer's chunks and prefixes against whole sequences, bf16 against float32;
#  2. the serving benchmark with the experts and the plain server on CUDA (a short run).
# Usage: bash bench/gpu_check.sh   (from a checkout with `make install-dev` done, torch with CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 MOERM_TEST_DEVICE=cuda
PY=${PY:-.venv/bin/python}
"$PY" - <<'PYTHON'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script checks the CUDA path"
print("device:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
PYTHON
"$PY" -m pytest -q -p no:cacheprovider \
    tests/models/test_prefix.py tests/expert_svc/test_prefix_scoring.py tests/expert_svc/test_precision.py
"$PY" bench/bench_serving.py --device cuda --quick --tag gpu-check
