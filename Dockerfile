# The chatgpt-course server in an image: `chatgpt-course serve` on port 8000, as a non-root user, for a model at /models/chat.
#
#   docker build -t chatgpt-course .
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/runs/chat/sft:/models/chat:ro" chatgpt-course
#
# The model is not in this image: mount it at /models/chat (docker run -v, a Kubernetes volume: deploy/k8s/), or bake one
# into an image of its own with two lines (scripts/check_deploy.sh does this):
#   FROM chatgpt-course
#   COPY sft /models/chat
# /models/chat may be a run directory, a checkpoint, or a versioned model directory (versions/<name>/, see 08b_backend).
#
# Build arguments:
#   BASE         the base image: any Debian-like image with python3 and its venv module (default python:3.12-slim).
#                Offline, scripts/check_deploy.sh makes localhost/debian-py:bookworm with debootstrap.
#   PIP_CERT     a CA bundle for pip, only where the build must trust a proxy's certificate (podman build -v HOST.crt:/run/hostca.crt:ro
#                --build-arg PIP_CERT=/run/hostca.crt); unset: pip's own bundle.
#   TORCH        what pip installs as torch (a requirement or a wheel's path); TORCH_INDEX: where it looks for it.
#
# Why a CPU index for torch: on PyPI, Linux x86_64 torch is the CUDA build. On the machine this was written on,
# `pip download torch --no-deps` resolved to torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl (555 MB, above the
# course's cap of 2.13.0), and installing it pulls the nvidia-* CUDA libraries (several GB more) that a CPU server never
# uses. PyTorch's CPU index (download.pytorch.org/whl/cpu, about 190 MB a wheel) is what a user gets by default. That index
# was not reachable from that machine (no DNS for download.pytorch.org), so scripts/check_deploy.sh passes a local CPU wheel
# instead: --build-arg TORCH=/run/wheels/torch-2.13.0+cpu-....whl --build-arg TORCH_INDEX=https://pypi.org/simple
# (PyPI then serves only torch's small dependencies). For a GPU image, use a CUDA base and TORCH_INDEX=https://pypi.org/simple.
ARG BASE=python:3.12-slim

# ---- build: a virtual environment with torch (CPU) and the course from the build context (see .dockerignore)
FROM ${BASE} AS build
ARG PIP_CERT
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH="torch>=2.4,<=2.13.0"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -q ${PIP_CERT:+--cert "$PIP_CERT"} --upgrade pip
RUN /opt/venv/bin/pip install -q ${PIP_CERT:+--cert "$PIP_CERT"} --index-url "$TORCH_INDEX" "$TORCH"
COPY . /src
# the torch installed above satisfies the course's torch requirement, so pip keeps it
RUN /opt/venv/bin/pip install -q ${PIP_CERT:+--cert "$PIP_CERT"} /src \
 && /opt/venv/bin/chatgpt-course serve --help > /dev/null \
 && /opt/venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---- run: the environment alone (no sources, no pip cache), a user without privileges
FROM ${BASE}
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 app && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
 && mkdir -p /models /data && chown app:app /data
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/home/app MPLCONFIGDIR=/tmp/matplotlib
# the working directory holds feedback.sqlite (serve's default --feedback-db): keep it on a volume to keep the feedback
WORKDIR /data
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
CMD ["chatgpt-course", "serve", "--checkpoint", "/models/chat", "--host", "0.0.0.0", "--port", "8000"]
