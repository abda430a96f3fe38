#!/usr/bin/env bash
# The GPU checks in one command, for a CUDA machine WITHOUT TensorRT and without network (torch with
# CUDA, onnx, onnxruntime, safetensors, typer, rich, pillow and pytest already installed; nothing is
# installed or downloaded). Runs in under 9 minutes (time limits: 150 s for the tests, 60 s for the
# cuda-python check, 300 s for the benchmark):
#
#   1. the environment: torch, CUDA, the GPU, nvidia-smi                      -> env.txt
#   2. the gpu-marked tests (pytest -m gpu; the TensorRT ones skip without TensorRT): among them the device
#      memory (backends/device.py) on real GPU memory through cuda-python, pycuda and torch, each where it
#      imports                                                                -> pytest-gpu.log, .xml
#   2b. cuda-python end to end: the device array's operations through cuda-python's runtime API (the
#      default TensorRT buffers), the GPU query through cuda-python, and which API was used (the new
#      cuda.bindings.runtime or the old cuda.cudart). cuda-python is not installed by this script: pass
#      CUDA_PYTHON_SITE=DIR, a folder with cuda/ (e.g. a copy of a venv's site-packages/cuda and
#      cuda_pathfinder*), to put it on the path; without it the step says so and counts as failed
#                                                                             -> cuda-python.log
#   3. benchmarks/headline.py --backend torch --device cuda: SAC-ViT pipeline vs the single-stage DeiT-S
#      baseline (random DeiT-S weights, 23% of images to stage 2) at batch 32 and batch 1
#                                                                             -> headline.log, .json
#
# Usage: scripts/gpu_check.sh [RESULTS_DIR]    (default: $OUT when set, else ./gpu-check-results)
# Exit code: 0 when every step passed, else the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
results="${1:-${OUT:-gpu-check-results}}"
mkdir -p "$results"
export PYTHONPATH="$PWD${CUDA_PYTHON_SITE:+:$CUDA_PYTHON_SITE}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
python="${PYTHON:-python3}"
failed=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to RESULTS/NAME.log
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$results/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$results/$name.log"
    echo "   exit $rc after $((SECONDS - t0)) s" | tee -a "$results/$name.log"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    git rev-parse HEAD 2>/dev/null || echo "not a git checkout"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
    "$python" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu 0: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB")
for name in ("onnx", "onnxruntime", "tensorrt", "pycuda"):
    try:
        print(name, __import__(name).__version__)
    except Exception as exc:
        print(name, "missing:", type(exc).__name__)
from sacvit_deploy.backends.device import import_cudart
found = import_cudart()
print("cuda-python:", found[1] if found else "missing")
EOF
} >"$results/env.txt" 2>&1
cat "$results/env.txt"

step pytest-gpu 150 "$python" -m pytest -m gpu -rs -q -p no:cacheprovider --junitxml "$results/pytest-gpu.xml" tests
step cuda-python 60 "$python" scripts/cuda_check.py
step headline 300 "$python" benchmarks/headline.py --backend torch --device cuda --batch 32 --iters 30 \
    --iters-batch1 50 --json "$results/headline.json"

echo "results in $results/: $(ls "$results" | tr '\n' ' ')"
exit "$failed"
