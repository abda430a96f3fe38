# sacvit-deploy with TensorRT, for a desktop/server GPU or a Jetson.
#
# NOT BUILT OR RUN IN THIS PROJECT'S CI (no Docker engine, no GPU there): see docs/tensorrt.md.
#
# Desktop / server (NGC TensorRT image; 25.01 ships TensorRT 10.8, CUDA 12.8, Python 3.12):
#   docker build -t sacvit-deploy:trt .
#   docker run --rm --gpus all -v "$PWD:/work" -w /work sacvit-deploy:trt build-engine export --out engines --fp16
#
# Jetson (TensorRT comes from JetPack inside the base image; r36.4 = JetPack 6.1/6.2, TensorRT 10.3, CUDA 12.6;
# no torch):
#   docker build -t sacvit-deploy:jetson --build-arg BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0 .
#   docker run --rm --runtime nvidia -v "$PWD:/work" -w /work sacvit-deploy:jetson build-engine export --out engines --fp16
#
# Build args:
#   BASE         the base image (default: NGC TensorRT, desktop)
#   PLATFORM     auto | desktop | jetson (auto: jetson when the base image is L4T)
#   TORCH_SPEC   desktop only: the torch requirement (keep it pinned: an unpinned torch pulls whatever pip
#                likes); empty: no torch (the engines then run with cuda-python buffers)
#   TORCH_INDEX  desktop only: where torch comes from. Empty (default): the CUDA 12.8 wheels from
#                download.pytorch.org (match the base image's CUDA if you change BASE)
#   CUDA_PYTHON  Jetson only: the cuda-python requirement for the device buffers; the default matches
#                r36.4 (JetPack 6.1/6.2, CUDA 12.6): "cuda-python==12.2.*" for r36.3 (JetPack 6.0),
#                "cuda-python==11.8.2" for r35 (JetPack 5, Python 3.8); empty: pycuda, compiled against the
#                image's CUDA (docs/tensorrt.md). The Jetson image installs no torch.
ARG BASE=nvcr.io/nvidia/tensorrt:25.01-py3
FROM ${BASE}

ARG PLATFORM=auto
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=""
ARG CUDA_PYTHON="cuda-python==12.6.*"

# NGC and L4T images install Python packages system-wide; TensorRT's bindings live there too.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/usr/local/cuda/bin:$PATH

WORKDIR /opt/sacvit-deploy
COPY pyproject.toml README.md ./
COPY sacvit_deploy ./sacvit_deploy

RUN set -eux; \
    platform="$PLATFORM"; \
    if [ "$platform" = auto ]; then \
        if [ -f /etc/nv_tegra_release ] || dpkg -s nvidia-l4t-core >/dev/null 2>&1; then platform=jetson; else platform=desktop; fi; \
    fi; \
    if [ "$platform" = jetson ]; then \
        # TensorRT must come from JetPack (apt), never from pip, on Jetson.
        python3 -c "import tensorrt" 2>/dev/null || { \
            apt-get update; \
            apt-get install -y --no-install-recommends python3-libnvinfer python3-pip python3-dev build-essential; \
            rm -rf /var/lib/apt/lists/*; }; \
        # No torch: numpy + TensorRT + cuda-python (or pycuda) run the engines; cpu: ONNX Runtime
        # (CPU) for build-engine's parity check.
        python3 -m pip install ".[jetson,cpu]"; \
        if [ -n "$CUDA_PYTHON" ]; then python3 -m pip install "$CUDA_PYTHON"; else python3 -m pip install ".[pycuda]"; fi; \
        if python3 -c "import torch" 2>/dev/null; then echo "the Jetson image must not install torch"; exit 1; fi; \
    else \
        if [ -n "$TORCH_SPEC" ]; then \
            python3 -m pip install "$TORCH_SPEC" --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"; \
        fi; \
        # tensorrt: the extra (already satisfied by the NGC image); cpu: ONNX Runtime for the parity check.
        python3 -m pip install ".[tensorrt,cpu]"; \
    fi; \
    sacvit-deploy --help > /dev/null; \
    python3 -c "import tensorrt, numpy; print('TensorRT', tensorrt.__version__, '| numpy', numpy.__version__)"

WORKDIR /work
ENTRYPOINT ["sacvit-deploy"]
CMD ["--help"]
