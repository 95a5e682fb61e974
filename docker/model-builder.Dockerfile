# syntax=docker/dockerfile:1
# The one-shot model step: torch (CPU build), training/ and model_export/. Its command,
# `python -m model_export.ensure`, downloads the official checkpoint named by PANNS_MODEL
# (default Cnn14) into PANNS_CHECKPOINT_DIR, verifies its SHA-256 and exports the bundle
# (fp32 + the PANNS_EXPORT_VARIANTS) into the first PANNS_MODELS directory, or exports a
# checkpoint of your own (PANNS_CHECKPOINT); it does nothing when a verified bundle is there.
# Build context: the repository root (see .dockerignore).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG PIP_VERSION=26.3
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch first, from the CPU-only index (no CUDA libraries); the `train` extra then finds
# torch==2.13.0 satisfied by 2.13.0+cpu.
# hadolint ignore=DL3013
RUN pip install "pip==${PIP_VERSION}" \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY training/ training/
COPY model_export/ model_export/
COPY service/ service/
# hadolint ignore=DL3013
RUN pip install ".[train,cpu]" \
    && python -c "import torch, training.models, model_export, service.core.card; print('torch', torch.__version__)" \
    && pip uninstall -y pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 panns \
    && useradd --system --uid 10001 --gid panns --home-dir /app --shell /usr/sbin/nologin panns \
    && mkdir -p /app /models /checkpoints \
    && chown panns:panns /app /models /checkpoints
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=4 \
    NUMBA_CACHE_DIR=/tmp/numba \
    PANNS_MODELS=/models/cnn14 \
    PANNS_CHECKPOINT_DIR=/checkpoints \
    PANNS_EXPORT_VARIANTS=fp16
WORKDIR /app
USER 10001:10001
CMD ["python", "-m", "model_export.ensure"]
