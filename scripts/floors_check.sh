#!/usr/bin/env bash
# The dependency floors job (called by .ci/run): a venv of its own with exactly the oldest versions
# pyproject.toml allows (constraints-floors.txt), then the model, export, runtime, quantize and CLI
# tests on them. torch's floor comes from PyPI as a CUDA build (about 2.5 GB with its nvidia-*
# wheels); it runs on the CPU. Usage: bash scripts/floors_check.sh [venv folder, default .venv-floors]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-floors}
start=$SECONDS

python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# Every dependency named, so each is held to its floor (-c alone constrains, it does not install).
"$venv/bin/python" -m pip install -q -c constraints-floors.txt \
    torch numpy onnx onnxruntime pillow typer rich safetensors pytest
"$venv/bin/python" -m pip install -q -c constraints-floors.txt -e .
installed=$((SECONDS - start))
"$venv/bin/python" - <<'PY'
from importlib.metadata import version

pins = {}
for line in open("constraints-floors.txt"):
    line = line.split("#", 1)[0].strip()
    if line:
        name, pinned = line.split("==")
        pins[name] = pinned
wrong = {name: version(name) for name, pinned in pins.items() if version(name) != pinned}
if wrong:
    raise SystemExit(f"floors job: installed {wrong}, not the floors {pins}")
print("floors job: " + ", ".join(f"{n} {v}" for n, v in pins.items()))
PY
echo "floors job: installed in ${installed} s"

# Model, .pth loading, export (with the baseline), the runtime pipeline, quantize and the CLI.
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_model.py tests/test_checkpoint.py tests/test_export.py tests/test_pipeline.py \
    tests/test_infer.py tests/test_quantize.py tests/test_cli.py tests/test_floors.py
# The first command a new user runs (export with --baseline, verification, infer, profile).
demo=$(mktemp -d)
"$venv/bin/sacvit-deploy" demo --out "$demo/sacvit-demo" >/dev/null
rm -rf "$demo"
echo "floors job: passed in $((SECONDS - start)) s (install ${installed} s)"
