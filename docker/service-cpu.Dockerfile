# syntax=docker/dockerfile:1
# The PANNs tagging service for hosts without a GPU: ONNX Runtime's CPU execution provider
# (the int8 bundle variant with PANNS_PRECISION=int8), no torch.
# Build context: the repository root (see .dockerignore). Only service/ is installed.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG ORT_VERSION=1.32.0
ARG PIP_VERSION=26.3
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
# Only service/ is in /src, so setuptools' package discovery installs the service alone.
# hadolint ignore=DL3013
RUN pip install "pip==${PIP_VERSION}" \
    && pip install ".[cpu]" "onnxruntime==${ORT_VERSION}" \
    && python -c "import onnxruntime, service.core.card; print('onnxruntime', onnxruntime.__version__)" \
    && pip uninstall -y pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
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
    PANNS_MODELS=/models/cnn14 \
    PANNS_DEVICE=cpu
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
CMD ["python", "-m", "service"]
