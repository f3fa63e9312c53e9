#!/usr/bin/env bash
# The GPU check, in one go (under 5 minutes on an H100): the kernel tests with Triton
# compiled for CUDA (not interpreted), then the kernel benchmark. Results go to $OUT
# (default ./gpu_check_out): device.txt, tests.log, kernels.txt, kernels.json.
#   bash launch/gpu_check.sh            # from the repository root, fastgan installed
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
unset TRITON_INTERPRET  # compiled kernels on the GPU
python - <<'PY' | tee "$OUT/device.txt"
import torch, triton
assert torch.cuda.is_available(), "gpu_check: no CUDA GPU"
print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
PY
status=0
timeout 150 python -m pytest -q tests/test_kernels.py \
    "tests/test_phases.py::test_training_is_the_same_on_the_triton_path" 2>&1 \
    | tee "$OUT/tests.log" || status=$?
timeout 150 python -m fastgan bench kernels --json "$OUT/kernels.json" 2>&1 \
    | tee "$OUT/kernels.txt" || status=$?
exit $status
