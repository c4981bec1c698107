# megatron-ego: `make demo` and `make test` do everything on a fresh machine.
PY      := .venv/bin/python
STAMP   := .venv/.setup-done
PIP     := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup test test-fast test-slurm test-image lint demo demo-policy clean-demo

setup: $(STAMP)

# Order matters (docs/environment.md): torch + torchvision first, so that no later package pulls
# another torch build; then the pinned CPU/dev set; then this project, editable.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) --upgrade pip
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -e .
	touch $@

lint: setup
	$(PY) -m ruff check .

# Everything (what CI runs). About 14 min on a 2-core machine (README).
test: setup lint
	$(PY) -m pytest

# Everyday work: leaves out the multi-process and end-to-end pipeline tests (tests/conftest.py).
test-fast: setup lint
	$(PY) -m pytest -m "not multiprocess and not pipeline"

# The Dockerfile built for real on a debootstrap stand-in for the NGC base (root, buildah,
# debootstrap, network to PyPI and Debian; docs/cluster.md "Building the image here").
test-image: setup
	REQUIRE_IMAGE_BUILD=1 $(PY) -m pytest -s tests/test_image_build.py

# The launch/slurm scripts on a real SLURM cluster started on this machine (needs Debian's
# slurm-wlm, munge and libpmix-dev; .ci/run installs them). Part of `make test`.
test-slurm: setup
	$(PY) -m pytest tests/test_slurm_cluster.py

demo: setup
	bash launch/demo.sh

# The TriFinger policy task on the demo's export (needs `make demo` first; 7 to 12 min measured
# on the shared 2-core box, docs/results.md).
demo-policy: setup
	bash launch/demo_policy.sh

clean-demo:
	rm -rf runs/demo
