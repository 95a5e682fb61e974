# syntax=docker/dockerfile:1
# The PANNs tagging service for GPU hosts: ONNX Runtime's CUDA execution provider, no torch.
#
# onnxruntime-gpu on PyPI is built for CUDA 13 + cuDNN 9 from 1.27 on (1.31.1 links
# libcudart.so.13 / libcublas.so.13), which needs an NVIDIA driver >= 580 on the host.
# Hosts with an older driver (CUDA 12.x) build the last CUDA 12 release instead:
#   docker compose build \
#     --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg ORT_GPU_VERSION=1.26.0 api
#
# Build context: the repository root (see .dockerignore). Only service/ is installed.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04

# Python 3.11 from Ubuntu 22.04 on the CUDA/cuDNN runtime; shared by both stages so the
# virtual environment's interpreter path (/usr/bin/python3.11) is the same in each.
FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM base AS builder
ARG ORT_GPU_VERSION=1.31.1
ARG PIP_VERSION=26.3
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3.11 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
# Only service/ is in /src, so setuptools' package discovery installs the service alone.
# hadolint ignore=DL3013
RUN pip install "pip==${PIP_VERSION}" \
    && pip install ".[gpu]" "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && python -c "import onnxruntime, service.core.card; print('onnxruntime', onnxruntime.__version__)" \
    && pip uninstall -y pip setuptools

FROM base AS runtime
RUN groupadd --system --gid 10001 panns \
    && useradd --system --uid 10001 --gid panns --home-dir /app --shell /usr/sbin/nologin panns \
    && mkdir -p /app /models \
    && chown panns:panns /app /models
COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py /app/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PANNS_HOST=0.0.0.0 \
    PANNS_PORT=8000 \
    PANNS_MODELS=/models/cnn14
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
CMD ["python", "-m", "service"]
