# Sourced by scripts that run the project's Python (bench/gpu_smoke.sh, launch/tiny_sweep.sh):
# sets $py (the PYTHON variable, else .venv/bin/python, else python3) and makes deepspeed and
# megatron-core importable, installing them from wheels in .whl/ into a temporary folder when the
# interpreter lacks them (GPU machines without network: docs/benchmarks.md); puts the repository
# on PYTHONPATH. Run from the repository root.
# shellcheck shell=bash

py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
if ! "$py" -c "import deepspeed, megatron.core" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "deepspeed / megatron-core missing and no wheels in .whl/" >&2
    exit 2
  fi
  site="$(mktemp -d)"
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
