# megatron-ego GPU image: NGC PyTorch + DeepSpeed + megatron-core + PyAV + mpi4py + this project.
#
#   docker build -t megatron-ego:latest .
#   docker build --build-arg USER_UID=$(id -u) --build-arg USER_GID=$(id -g) -t megatron-ego .
#   docker build --build-arg USER_UID=0 --build-arg USER_GID=0 -t megatron-ego .   # run as root
#   enroot import -o megatron-ego.sqsh dockerd://megatron-ego:latest             # for pyxis/enroot
#
# Built and run here on a CPU stand-in for the NGC base: launch/docker/build_standin.sh
# (docs/cluster.md, "Building the image here").
#
# Base image. NGC PyTorch 25.12 (release notes, docs.nvidia.com/deeplearning/frameworks/
# pytorch-release-notes/rel-25-12.html): Python 3.12 (/usr/local/lib/python3.12/dist-packages),
# PyTorch 2.10.0a0+b4e4ee81d3.nv25.12, CUDA 13.1.0; Transformer Engine, apex, NCCL and HPC-X Open
# MPI come with it. Python 3.12 is what megatron-core >= 0.17 requires (its wheels say
# Requires-Python >=3.12), so the image takes megatron-core 0.17.1 -- the newest patch of the
# release right after the 0.16.1 that the CPU machines (Python 3.11) run, which keeps the API gap
# to one minor release. On a Python 3.11 base pass --build-arg MEGATRON_CORE_VERSION=0.16.1.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3
FROM ${BASE_IMAGE}

# What the base image ships (from its release notes; recorded, never installed: the base's torch
# stays), then the two versions the image chooses itself. Both must lie in
# megatron_ego/versions.py:SUPPORTED (tests/test_docker.py checks them, and the last RUN checks
# every installed version).
ARG IMAGE_PYTHON_VERSION=3.12
ARG IMAGE_TORCH_VERSION=2.10.0a0+b4e4ee81d3.nv25.12
ARG MEGATRON_CORE_VERSION=0.17.1
ARG PROJECTARIA_TOOLS_VERSION=2.3.0
# The user the container runs as. Docker/Kubernetes clusters that forbid root: keep a non-root uid
# (pass your own with --build-arg USER_UID=$(id -u)). enroot/pyxis run as the calling user anyway.
ARG USER_UID=1000
ARG USER_GID=1000
ARG USER_NAME=ego

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    MEGATRON_EGO_HOME=/workspace/megatron-ego

# The base's /etc/pip/constraint.txt (NGC >= 25.03, PIP_CONSTRAINT) stays in force: nothing below
# may move a package that the base ships (torch, numpy, TE, tqdm, pillow, ...). So the packages are
# named here and launch/docker/base_pins.py writes their requirements, against the base as it
# comes: a package that the base ships goes bare (its version stays the base's; pip has nothing to
# do), one that it lacks is pinned at requirements.txt's version (megatron-core and
# projectaria-tools: at the ARGs above). The base's own `pip check` report is kept as the
# baseline of the last check.
COPY requirements.txt launch/docker/base_pins.py /opt/megatron-ego-build/
RUN python -c "import sys; core = tuple(int(x) for x in '${MEGATRON_CORE_VERSION}'.split('.')[:2]); \
sys.exit(0 if core < (0, 17) or sys.version_info >= (3, 12) else 'error: megatron-core ${MEGATRON_CORE_VERSION} \
needs Python >= 3.12 and this base has ' + sys.version.split()[0] + ': build with --build-arg MEGATRON_CORE_VERSION=0.16.1')" \
 && mkdir -p /etc/megatron-ego \
 && { python -m pip check > /etc/megatron-ego/base-pip-check.txt 2>&1 || true; } \
 && cd /opt/megatron-ego-build \
 && python base_pins.py requirements.txt deepspeed "megatron-core==${MEGATRON_CORE_VERSION}" av einops \
      safetensors scikit-image numpy tensorboard tqdm PyYAML pillow matplotlib numba llvmlite > python.txt \
 && python base_pins.py requirements.txt "projectaria-tools==${PROJECTARIA_TOOLS_VERSION}" > aria.txt \
 && python base_pins.py requirements.txt mpi4py > mpi.txt

# One resolve for the Python packages, under the base's constraint. DeepSpeed ships only an sdist
# whose setup.py imports torch: it builds against the base's torch (--no-build-isolation); its CUDA
# ops compile on first use (point TORCH_EXTENSIONS_DIR at shared storage to compile once per
# cluster, see docs/cluster.md).
RUN python -m pip install --no-build-isolation -r /opt/megatron-ego-build/python.txt

# projectaria-tools for the Aria fisheye undistortion in preprocess/ (calibration, data_provider).
# --no-deps: its requirements (jupyter, rerun-sdk, plotly, ...) serve its viewers, not those two
# compiled modules, which import with numpy alone.
RUN python -m pip install --no-deps -r /opt/megatron-ego-build/aria.txt

# mpi4py from source against the base's Open MPI (HPC-X, mpicc on PATH), so that
# `srun --mpi=pmix python -m preprocess.egoexo4d` uses the cluster's PMIx through it.
RUN python -m pip install --no-binary=mpi4py -r /opt/megatron-ego-build/mpi.txt

RUN if [ "${USER_UID}" != "0" ] && ! getent passwd "${USER_UID}" >/dev/null; then \
        (getent group "${USER_GID}" >/dev/null || groupadd --gid "${USER_GID}" "${USER_NAME}") \
        && useradd --uid "${USER_UID}" --gid "${USER_GID}" --create-home --shell /bin/bash "${USER_NAME}"; \
    fi

WORKDIR ${MEGATRON_EGO_HOME}
COPY --chown=${USER_UID}:${USER_GID} . ${MEGATRON_EGO_HOME}
# The project itself, without dependencies (they are all above or in the base image). Then every
# version is checked against megatron_ego/versions.py, `pip check` must add no problem to the
# base's (but projectaria-tools' requirements, left out above), and every module of megatron_ego, preprocess and launch must import
# (launch/docker/check_image.py). The work folder (and runs/ inside it) is made the image user's,
# so that runs, caches and egg-info are writable without root; and the base's GPU stack is
# recorded in the image.
RUN python -m pip install --no-deps "${MEGATRON_EGO_HOME}" \
 && python -c "from megatron_ego.versions import check_versions; print(check_versions())" \
 && python launch/docker/check_image.py --baseline /etc/megatron-ego/base-pip-check.txt \
      --no-deps-of projectaria-tools \
 && mkdir -p "${MEGATRON_EGO_HOME}/runs" \
 && chown -R "${USER_UID}:${USER_GID}" "${MEGATRON_EGO_HOME}" \
 && for dist in torch transformer-engine transformer_engine apex megatron-core deepspeed; do \
        python -c 'import sys; from importlib.metadata import version; print(sys.argv[1], version(sys.argv[1]))' \
          "$dist" 2>/dev/null || echo "$dist absent"; \
    done | tee /etc/megatron-ego-image-versions.txt

USER ${USER_UID}:${USER_GID}
