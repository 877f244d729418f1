# brasyn: synthesis of a missing brain MRI contrast (t1n, t1c, t2w, t2f) with cWDM.
#
#   docker build -t brasyn:0.1.0 .
#   docker run --rm --network none --gpus all -v IN:/input:ro -v OUT:/output brasyn:0.1.0
#
# The torch wheel brings its own CUDA runtime and cuDNN, so the host needs only an NVIDIA driver new
# enough for the CUDA flavour built in. The default, cu130 (CUDA 13, cuDNN 9.20, where bf16 Conv3d is
# fast), needs a driver of the 580 series or newer. For the older drivers of shared clusters build the
# CUDA 12 flavour (driver 525 or newer), with the base image of the same CUDA:
#   docker build --build-arg TORCH_CUDA=cu128 --build-arg CUDA_BASE=nvidia/cuda:12.8.1-base-ubuntu24.04 .
#   docker build --build-arg TORCH_CUDA=cu126 --build-arg CUDA_BASE=nvidia/cuda:12.6.3-base-ubuntu24.04 .
# requirements.txt stays the one place torch's version is pinned; TORCH_CUDA only picks the wheel index.
# Nothing is downloaded at run time.
#
# Weights: the image carries the folder the build argument WEIGHTS names (default weights/, the small demo
# model; every run of such an image starts with a line in capitals that says DEMO WEIGHTS). For the image
# that goes to the challenge, bake in the official cWDM checkpoints (or retrained ones): a folder inside
# the build context, either the four downloaded files under their released names (t1_gen.pt, t1ce_gen.pt,
# t2_gen.pt, flair_gen.pt) or, better (sha256 in a manifest), one made by
#   python -m brasyn.weights fetch-official --out official-weights
# (or import-official DOWNLOADS --out official-weights for files already downloaded) and then
#   docker build --build-arg WEIGHTS=official-weights -t brasyn:0.1.0 .
ARG CUDA_BASE=nvidia/cuda:13.0.2-base-ubuntu24.04
FROM ${CUDA_BASE}
ARG TORCH_CUDA=cu130

ARG VERSION=0.1.0
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="brasyn" \
      org.opencontainers.image.description="Synthesises the missing MR contrast of brain tumour cases with a conditional 3-D wavelet diffusion model (cWDM)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="MIT" \
      org.brasyn.torch-cuda="${TORCH_CUDA}"

# Any uid may run the image, with no passwd entry and a read-only root: every cache points at /tmp.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/brasyn
COPY requirements.txt ./
# the flavour's index beside the default one: its torch carries a +cuXXX local version, which pip prefers
RUN pip install --no-cache-dir --extra-index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
        -r requirements.txt

COPY LICENSE README.md pyproject.toml entrypoint.py ./
COPY brasyn ./brasyn
# the weights folder to bake in, relative to the build context (see the top of this file)
ARG WEIGHTS=weights
COPY ${WEIGHTS} ./weights
# byte-compile now: at run time the image may be read-only
RUN python -m compileall -q brasyn entrypoint.py \
    && chmod -R a+rX /opt/brasyn \
    && useradd --uid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin brasyn

# No USER: started without -u the image runs as root, and the entrypoint becomes the owner of /output
# (its uid:gid) before it reads any case, so the outputs belong to whoever owns OUT (a root-owned OUT is
# written as root). Started with -u (the orchestrator, MedPerf; or -u brasyn, the user above) it runs as
# given.
ENTRYPOINT ["python", "/opt/brasyn/entrypoint.py"]
CMD []
