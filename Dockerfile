# poster-fer's CPU runtime: `poster-fer serve` with the shipped default model and the bundled YuNet detector.
#
#   docker build -t poster-fer .
#   docker run --rm -p 8000:8000 -e POSTER_FER_API_KEY=change-me poster-fer
#   curl -H "X-API-Key: change-me" -F file=@photo.jpg http://127.0.0.1:8000/v1/predict
#
# Why these choices (docs/serving.md, "Container"):
# - The light runtime: the project with its `serve` extra and no PyTorch, so the model runs in ONNX Runtime from
#   the model.onnx it ships with (same labels and calibrated probabilities; about 400 MB of Python packages
#   instead of 1.5 GB with CPU PyTorch). For the PyTorch backend add, before the project:
#     RUN pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
#   and install ".[serve,torch]" (`--backend torch`).
# - The model and the detector are package data, so the running container needs no network at all; the build
#   is the only step that downloads (Python packages).
# - It listens on 0.0.0.0 inside the container (port publishing needs that), and `poster-fer serve` refuses to
#   listen beyond loopback without an API key: set POSTER_FER_API_KEY, or append `--insecure-no-key` to the run
#   command for a private network.
# - A non-root user; a health check on /healthz with the standard library (the slim image has no curl).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[serve]" && rm -rf /src

RUN useradd --create-home --uid 10001 fer
USER fer
WORKDIR /home/fer

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

ENTRYPOINT ["poster-fer", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD []
