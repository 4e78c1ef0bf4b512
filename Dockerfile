# danet-serve images (docs/deploy.md). Targets:
#   cpu     python:3.11-slim + onnxruntime (CPU build); the default target (last stage)
#   gpu     CUDA_IMAGE (by default the same Python base) + onnxruntime-gpu with CUDA 13, cuDNN 9 and cuBLAS
#           from PyPI wheels
#   export  one-shot `danet-export` with torch (CPU build); never used for serving
# The runtime images hold the danet-serve wheel (embedded default model included as package data), its
# runtime dependencies and danet-serve's block cache (built in the native stage), and nothing else: no
# torch, no compiler, no build tools. Configuration is by
# DANET_* environment variables (server/settings.py); the entry point is exec-form so SIGTERM reaches
# the server, which then stops accepting, drains and exits.
# No `# syntax=` line: the builder's own Dockerfile frontend (BuildKit, Docker >= 20.10) has everything used
# here (RUN --mount), and fetching a frontend image would need a registry, which offline builders lack.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The gpu stage's base: any image with Python 3.11 and pip (e.g. an NVIDIA CUDA runtime image with Python
# added). By default the same Python base: CUDA 13, cuDNN 9 and cuBLAS then come from NVIDIA's PyPI wheels.
ARG CUDA_IMAGE=${PYTHON_IMAGE}

# Layers are few on purpose: every RUN/COPY is one layer, and storage drivers without overlays (vfs in CI)
# copy the whole file system per layer. Helper scripts that only run at build time are bind-mounted.
# pip configuration (optional): every pip step mounts the build secret `pip_conf` as /etc/pip.conf, e.g.
# a private index with its credentials: `docker build --secret id=pip_conf,src=$HOME/.config/pip/pip.conf .`
# A secret is neither stored in the image nor part of the cache key. tests/deploy points it at a host
# wheelhouse (deploy/docker/wheelhouse.py). Without it pip uses PyPI.

# ---------------------------------------------------------------------------------------------------
# builder: the project wheel (pure Python, no torch) plus one requirement list per image flavour.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The build context is exactly the wheel's sources (.dockerignore is an allow-list), mounted read-write
# so setuptools can write its build/ folder; those writes are discarded.
# pyproject.toml wants onnxruntime-gpu on Linux x86_64; runtime_requirements.py swaps in the build each
# flavour needs, so the wheel is installed with --no-deps next to an explicit list (see its docstring).
RUN --mount=type=bind,target=/src,rw \
    --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    pip install "packaging==24.2" \
    && pip wheel --no-deps --wheel-dir /wheels /src \
    && for flavour in cpu gpu; do \
        python /src/deploy/docker/runtime_requirements.py /wheels/danet_serve-*.whl --flavour "$flavour" \
            > "/wheels/requirements-$flavour.txt"; \
    done \
    && python /src/deploy/docker/runtime_requirements.py /wheels/danet_serve-*.whl --flavour cpu --extra export \
        > /wheels/requirements-export.txt

# ---------------------------------------------------------------------------------------------------
# native: danet-serve's block cache (server/native/danet_blockcache.c; server/allocator.py preloads it),
# compiled here with Debian's gcc so the runtime images get the library and no compiler. Rebuilt only when
# server/native changes. The library links only glibc, so it runs on any base whose glibc is at least this
# base's (check_image.py loads it in each runtime image).
FROM ${PYTHON_IMAGE} AS native
# DL3008: gcc and libc6-dev are whatever the base's Debian release ships; this stage's only output is
# the library, whose one dependency is that release's glibc.
# hadolint ignore=DL3008
RUN --mount=type=bind,source=server/native,target=/src \
    apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && mkdir /native \
    && CC=gcc sh /src/build.sh /native/libdanet_blockcache.so

# ---------------------------------------------------------------------------------------------------
# gpu: the cpu image's Python base + onnxruntime-gpu with NVIDIA's CUDA 13, cuDNN 9 and cuBLAS wheels from
# PyPI (runtime_requirements.py); no vendor CUDA base image. The host provides only the driver
# (libcuda.so.1, mounted by the NVIDIA Container Toolkit); every other library the CUDA provider links is
# in the image, which check_image.py verifies with ldd during the build.
FROM ${CUDA_IMAGE} AS gpu
# Optional TensorRT execution provider: e.g. --build-arg TENSORRT_LIBS="tensorrt-cu13-libs==10.*"
# (onnxruntime-gpu links libnvinfer.so.10). Without it the server uses the CUDA provider.
ARG TENSORRT_LIBS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/docker/healthcheck.py /usr/local/bin/danet-healthcheck
# Two layers, unlike cpu: the first (user, folders, onnxruntime-gpu + the CUDA libraries, ~3 GB) mounts
# only the requirement list, so it stays cached while the sources change; the second adds the wheel.
# The nvidia/*/lib folders of the wheels go into the dynamic loader's configuration, so the CUDA provider,
# cuDNN's own dlopen of its engines, ldd and any process resolve them without LD_LIBRARY_PATH.
# TENSORRT_LIBS is a requirement spec chosen by whoever builds (empty = skipped), pinned there, not here.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels/requirements-gpu.txt,target=/tmp/requirements-gpu.txt \
    --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    groupadd --system --gid 10001 danet \
    && useradd --system --uid 10001 --gid danet --create-home --home-dir /home/danet \
        --shell /usr/sbin/nologin danet \
    && mkdir -p /models /var/cache/danet-serve/tensorrt \
    && chown danet:danet /models /var/cache/danet-serve/tensorrt \
    && pip install -r /tmp/requirements-gpu.txt \
    && if [ -n "${TENSORRT_LIBS}" ]; then pip install "${TENSORRT_LIBS}"; fi \
    && python -c "import glob, sysconfig; p = sysconfig.get_path('purelib'); \
        print(*sorted(glob.glob(p + '/nvidia/*/lib') + glob.glob(p + '/tensorrt_libs')), sep='\n')" \
        > /etc/ld.so.conf.d/danet-nvidia-wheels.conf \
    && ldconfig
RUN --mount=type=bind,from=builder,source=/wheels,target=/tmp/wheels \
    --mount=type=bind,from=native,source=/native,target=/tmp/native \
    --mount=type=bind,source=deploy/docker/check_image.py,target=/tmp/check_image.py \
    pip install --no-deps /tmp/wheels/danet_serve-*.whl \
    && install -D -m 0644 /tmp/native/libdanet_blockcache.so \
        "$(python -c 'from server.allocator import BLOCK_CACHE; print(BLOCK_CACHE)')" \
    && python /tmp/check_image.py --flavour gpu
ENV DANET_HOST=0.0.0.0 \
    DANET_HTTP_PORT=8000 \
    DANET_GRPC_PORT=8001 \
    DANET_TRT_CACHE_DIR=/var/cache/danet-serve/tensorrt \
    DANET_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/danet
EXPOSE 8000 8001
# start-period covers model load + warm-up (and a first TensorRT engine build when that is enabled).
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "/usr/local/bin/danet-healthcheck", "/readyz"]
ENTRYPOINT ["danet-serve"]

# ---------------------------------------------------------------------------------------------------
# gpu-report: the gpu image plus what `python -m bench.gpu_report` needs to export its models (torch, CPU
# build) and read GPU memory (nvidia-ml-py). For measuring a GPU, never for serving (docs/deploy.md).
FROM gpu AS gpu-report
ARG TORCH_INDEX_URL=""
USER 0:0
# nvidia-ml-py only reads NVML through the driver; any release does, so it is left unpinned.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/tmp/wheels \
    --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    grep -v -E '^onnxruntime([=<>~! ;]|$)' /tmp/wheels/requirements-export.txt > /tmp/export.txt \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} -r /tmp/export.txt nvidia-ml-py \
    && rm /tmp/export.txt
USER 10001:10001
ENTRYPOINT ["python", "-m", "bench.gpu_report"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------
# export: torch (CPU build) + onnx tooling for `docker compose --profile export run export`.
FROM ${PYTHON_IMAGE} AS export
# Index holding torch's CPU-only wheels. Empty = the default index, whose Linux x86_64 torch wheel also
# pulls the CUDA libraries (several GB); docs/deploy.md shows the value to pass.
ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/tmp/wheels \
    --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    groupadd --system --gid 10001 danet \
    && useradd --system --uid 10001 --gid danet --create-home --home-dir /home/danet \
        --shell /usr/sbin/nologin danet \
    && mkdir -p /models /checkpoints \
    && chown danet:danet /models \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} -r /tmp/wheels/requirements-export.txt \
    && pip install --no-deps /tmp/wheels/danet_serve-*.whl
USER 10001:10001
WORKDIR /home/danet
ENTRYPOINT ["danet-export"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------------
# cpu (default target): python:3.11-slim + the CPU build of onnxruntime.
FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/docker/healthcheck.py /usr/local/bin/danet-healthcheck
# One layer: user, folders, dependencies, the wheel, and the build-time gate (check_image.py fails the
# build when torch or a compiler got in, or the default model, the block cache or CPU provider is missing).
RUN --mount=type=bind,from=builder,source=/wheels,target=/tmp/wheels \
    --mount=type=bind,from=native,source=/native,target=/tmp/native \
    --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=bind,source=deploy/docker/check_image.py,target=/tmp/check_image.py \
    groupadd --system --gid 10001 danet \
    && useradd --system --uid 10001 --gid danet --create-home --home-dir /home/danet \
        --shell /usr/sbin/nologin danet \
    && mkdir -p /models /var/cache/danet-serve/tensorrt \
    && chown danet:danet /models /var/cache/danet-serve/tensorrt \
    && pip install -r /tmp/wheels/requirements-cpu.txt \
    && pip install --no-deps /tmp/wheels/danet_serve-*.whl \
    && install -D -m 0644 /tmp/native/libdanet_blockcache.so \
        "$(python -c 'from server.allocator import BLOCK_CACHE; print(BLOCK_CACHE)')" \
    && python /tmp/check_image.py --flavour cpu
# Only the CPU build of onnxruntime is installed: asking for GPU providers would only log a fallback.
ENV DANET_HOST=0.0.0.0 \
    DANET_PROVIDERS=CPUExecutionProvider \
    DANET_HTTP_PORT=8000 \
    DANET_GRPC_PORT=8001 \
    DANET_TRT_CACHE_DIR=/var/cache/danet-serve/tensorrt \
    DANET_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/danet
EXPOSE 8000 8001
# start-period covers model load + warm-up of the preferred-size bucket on a CPU.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/bin/danet-healthcheck", "/readyz"]
ENTRYPOINT ["danet-serve"]
