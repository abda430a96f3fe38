#!/usr/bin/env bash
# The runtime without torch: a venv with `.[cpu]` only (onnx + ONNX Runtime, no torch) runs an export
# made elsewhere: the demo's inference half, infer, profile, calibrate, check and quantize must each exit 0.
#
#   scripts/no_torch_check.sh TORCH_PYTHON [VENV]
#
# TORCH_PYTHON: a Python with this package and torch (CI: .venv/bin/python); it makes the export (the
# demo's files) that the torch-free venv then reads. VENV (default .venv-notorch) is created if missing.
# Every step runs even when one fails; the script ends with the list of failed steps and exit code 1.
set -uo pipefail
cd "$(dirname "$0")/.."

torch_python=${1:?usage: scripts/no_torch_check.sh TORCH_PYTHON [VENV]}
venv=${2:-.venv-notorch}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip > "$work/pip.log" 2>&1
fi
"$venv/bin/python" -m pip install -q -e ".[cpu]" > "$work/pip.log" 2>&1 \
    || { tail -20 "$work/pip.log"; echo "no-torch: pip install .[cpu] failed"; exit 1; }
if "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "no-torch: torch is importable in $venv (.[cpu] pulled it in, or it was there before)"
    exit 1
fi
echo "no-torch: $venv has no torch ($("$venv/bin/python" -m pip list 2>/dev/null | grep -ciE '^(onnx|onnxruntime) ') of onnx/onnxruntime)"

# The export, made where torch is: the demo's files (model copy, images, labelled/, export/).
demo="$work/demo"
"$torch_python" -m sacvit_deploy demo --out "$demo" --no-profile > "$work/demo-export.log" 2>&1 \
    || { tail -20 "$work/demo-export.log"; echo "no-torch: the demo export in the torch venv failed"; exit 1; }

cli="$venv/bin/sacvit-deploy"
failed=()
step() {
    local name=$1
    shift
    if "$@" > "$work/step.log" 2>&1; then
        echo "no-torch: ok    $name"
    else
        echo "no-torch: FAIL  $name (exit $?): $*"
        tail -5 "$work/step.log" | sed 's/^/    /'
        failed+=("$name")
    fi
}
step "demo --no-export" "$cli" demo --out "$demo" --no-export --no-profile
step "infer" "$cli" infer "$demo/images/" --artifacts "$demo/export" --no-progress
step "profile" "$cli" profile --artifacts "$demo/export" --images "$demo/images" --batch-sizes 1,4 --iters 3 --warmup 1
step "calibrate" "$cli" calibrate --images "$demo/labelled/" --artifacts "$demo/export" --target-exit-rate 0.5
# 8.5 is left out: the demo's default export (opset-17 LayerNorm) does not parse there, and check says so.
step "check" "$cli" check "$demo/export" --trt 8.6,10,11
# INT8 Q/DQ graphs from the export, verified against the float ones: onnx + ONNX Runtime only.
step "quantize" "$cli" quantize "$demo/export" --calib-images "$demo/images" --images "$demo/labelled/" --out "$work/int8"
# export, train, check --run, --backend torch need torch: exit code 1, one error line naming the extra,
# no traceback.
says_extra() {
    local extra=$1
    shift
    "$cli" "$@" > "$work/extra.log" 2>&1
    local code=$?
    [ "$code" -eq 1 ] && grep -qF "pip install 'sacvit-deploy[$extra]'" "$work/extra.log" \
        && ! grep -q Traceback "$work/extra.log" && [ "$(grep -c '^error:' "$work/extra.log")" -eq 1 ] \
        || { echo "exit $code:"; cat "$work/extra.log"; return 1; }
}
step "export names its extra" says_extra export export "$demo/model.safetensors" --out "$work/x"
step "train names its extra" says_extra train train "$demo/labelled" --out "$work/t"
step "check --run names its extra" says_extra torch check "$demo/export" --trt 10 --run
step "--backend torch names its extra" says_extra torch infer "$demo/images/" --artifacts "$demo/export" --backend torch

if [ ${#failed[@]} -gt 0 ]; then
    echo "no-torch: ${#failed[@]} step(s) failed: ${failed[*]}"
    exit 1
fi
echo "no-torch: demo's inference half, infer, profile, calibrate, check, quantize ran without torch"
