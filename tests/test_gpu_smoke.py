"""bench/gpu_smoke.sh --dry-run: the GPU smoke benchmark's objects (300M- and 1B-shaped trunks,
ZeRO-2 engine, teacher, losses, activation recomputation) built and stepped on CPU, shrunk."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_smoke_dry_run_builds_and_steps_both_models(tmp_path):
    out = subprocess.run(["bash", "bench/gpu_smoke.sh", "--dry-run", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    # 300M, 1B, then the 300M sync check (no CUDA here: no sync counts); TE rows need TE
    assert [r["config"] for r in rows] == ["configs/egoagent_300m.yaml", "configs/egoagent_1b.yaml",
                                           "configs/egoagent_300m.yaml"]
    for r in rows:
        assert r["losses_finite"] and r["recompute"] and r["clips_per_s"] > 0
        assert r["layer_spec"] == "local+sdpa"
    # FLOPs follow the (shrunk) configs' own count: the 1B shape is wider, so it costs more
    assert rows[1]["train_flops_per_clip"] > rows[0]["train_flops_per_clip"]
    assert "clips/s" in out.stdout and "MFU" in out.stdout
