# megatron-ego GPU image: NGC PyTorch + DeepSpeed + megatron-core + PyAV + mpi4py + this project.
#
#   docker build -t megatron-ego:latest .
#   docker build --build-arg USER_UID=$(id -u) --build-arg USER_GID=$(id -g) -t megatron-ego .
#   docker build --build-arg USER_UID=0 --build-arg USER_GID=0 -t megatron-ego .   # run as root
#   enroot import -o megatron-ego.sqsh dockerd://megatron-ego:latest             # for pyxis/enroot
#
# Base image. NGC PyTorch 25.12 (release notes, docs.nvidia.com/deeplearning/frameworks/
# pytorch-release-notes/rel-25-12.html): Python 3.12 (/usr/local/lib/python3.12/dist-packages),
# PyTorch 2.10.0a0+b4e4ee81d3, CUDA 13.1.0; Transformer Engine, apex, NCCL and HPC-X Open MPI come
# with it. Python 3.12 is what megatron-core >= 0.17 requires (its wheels say Requires-Python
# >=3.12), so the image takes megatron-core 0.17.1 -- the newest patch of the release right after
# the 0.16.1 that the CPU machines (Python 3.11) run, which keeps the API gap to one minor release.
# Every pin below must lie in megatron_ego/versions.py:SUPPORTED (tests/test_docker.py checks it,
# and the last RUN checks the image's own torch).
ARG NGC_PYTORCH_TAG=25.12-py3
FROM nvcr.io/nvidia/pytorch:${NGC_PYTORCH_TAG}

# What the base image ships (from its release notes; not installed here: never replace its torch).
ARG IMAGE_PYTHON_VERSION=3.12
ARG IMAGE_TORCH_VERSION=2.10.0a0+b4e4ee81d3
ARG MEGATRON_CORE_VERSION=0.17.1
ARG DEEPSPEED_VERSION=0.19.8
ARG AV_VERSION=18.1.0
ARG MPI4PY_VERSION=4.1.2
ARG PROJECTARIA_TOOLS_VERSION=2.3.0
ARG NUMBA_VERSION=0.68.1
# The user the container runs as. Docker/Kubernetes clusters that forbid root: keep a non-root uid
# (pass your own with --build-arg USER_UID=$(id -u)). enroot/pyxis run as the calling user anyway.
ARG USER_UID=1000
ARG USER_GID=1000
ARG USER_NAME=ego

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    MEGATRON_EGO_HOME=/workspace/megatron-ego

# The image's /etc/pip/constraint.txt (NGC >= 25.03) stays in force: nothing below may move a
# package that the image was built with (torch, numpy, TE, ...). pip fails loudly if it would.
# DeepSpeed ships only an sdist whose setup.py imports torch: build it against the image's torch
# (--no-build-isolation); its CUDA ops compile on first use (point TORCH_EXTENSIONS_DIR at shared
# storage to compile once per cluster, see docs/cluster.md).
# The other packages are pinned as in requirements.txt (tests/test_docker.py checks that every pin
# here equals requirements.txt's, megatron-core excepted, see above).
RUN python -m pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}" \
 && python -m pip install "megatron-core==${MEGATRON_CORE_VERSION}" "av==${AV_VERSION}" \
 && python -m pip install "einops==0.8.2" "safetensors==0.8.0" "scikit-image==0.26.0" \
      "tensorboard==2.21.0" "tqdm==4.70.1" "PyYAML==6.0.4" "pillow==13.0.0" "matplotlib==3.11.2" \
      "numba==${NUMBA_VERSION}" "llvmlite==0.50.0"

# projectaria-tools for the Aria fisheye undistortion in preprocess/ (calibration, data_provider).
# --no-deps: its requirements (jupyter, rerun-sdk, plotly, ...) serve its viewers, not those two
# compiled modules, which import with numpy alone.
RUN python -m pip install --no-deps "projectaria-tools==${PROJECTARIA_TOOLS_VERSION}"

# mpi4py from source against the image's Open MPI (HPC-X, mpicc on PATH), so that
# `srun --mpi=pmix python -m preprocess.egoexo4d` uses the cluster's PMIx through it.
RUN python -m pip install --no-binary=mpi4py "mpi4py==${MPI4PY_VERSION}"

RUN if [ "${USER_UID}" != "0" ] && ! getent passwd "${USER_UID}" >/dev/null; then \
        (getent group "${USER_GID}" >/dev/null || groupadd --gid "${USER_GID}" "${USER_NAME}") \
        && useradd --uid "${USER_UID}" --gid "${USER_GID}" --create-home --shell /bin/bash "${USER_NAME}"; \
    fi

WORKDIR ${MEGATRON_EGO_HOME}
COPY --chown=${USER_UID}:${USER_GID} . ${MEGATRON_EGO_HOME}
# The project itself, without dependencies (they are all above or in the base image). Then the
# work folder (and runs/ inside it) is made the image user's, so that runs, caches and egg-info
# are writable without root; and the base image's own GPU stack is recorded in the image.
RUN python -m pip install --no-deps "${MEGATRON_EGO_HOME}" \
 && python -c "from megatron_ego.versions import check_versions; print(check_versions())" \
 && mkdir -p "${MEGATRON_EGO_HOME}/runs" \
 && chown -R "${USER_UID}:${USER_GID}" "${MEGATRON_EGO_HOME}" \
 && for dist in torch transformer-engine transformer_engine apex megatron-core deepspeed; do \
        python -c 'import sys; from importlib.metadata import version; print(sys.argv[1], version(sys.argv[1]))' \
          "$dist" 2>/dev/null || echo "$dist absent"; \
    done | tee /etc/megatron-ego-image-versions.txt

USER ${USER_UID}:${USER_GID}
