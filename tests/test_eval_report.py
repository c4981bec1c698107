"""results.json / results.md: the tables people read and the provenance record."""

from __future__ import annotations

import json

from megatron_ego.eval.provenance import data_manifest, git_commit
from megatron_ego.eval.report import read_provenance, read_results, task_table, write_results

RESULTS = {"motion": {"zero_velocity": {"mpjpe_30fps": 5.048123456789},
                      "egoagent": {"mpjpe_30fps": 2.9012345678, "num_clips": 12}}}


def test_task_table_rounds_and_orders_methods():
    table = task_table("motion", RESULTS["motion"]).splitlines()
    assert table[0] == "| method | mpjpe_30fps (cm) | num_clips |"
    assert table[2] == "| egoagent | 2.90 | 12 |"  # EgoAgent first, 2 decimals
    assert table[3] == "| zero_velocity | 5.05 | n/a |"


def test_provenance_is_written_beside_the_results_and_kept_apart(tmp_path):
    provenance = {"command": "launch/evaluate.py --model m", "git_commit": "abc",
                  "model": {"export": "m", "checkpoint": "r/checkpoints/step_0000042",
                            "checkpoint_step": "42", "config": {"model": {"num_layers": 2}}},
                  "data": {"path": "d", "num_clips": 7}, "knn": None}
    json_path, md_path = write_results(RESULTS, tmp_path, {"motion": provenance})
    raw = json.loads(json_path.read_text())
    assert raw["provenance"] == {"motion": provenance}
    assert read_results(json_path) == json.loads(json.dumps(RESULTS))
    assert read_provenance(json_path) == {"motion": provenance}
    md = md_path.read_text()
    assert "## Provenance" in md and "Tasks motion:" in md and "(step 42)" in md
    assert "`launch/evaluate.py --model m`" in md


def test_git_commit_and_manifest_fields(tmp_path):
    assert git_commit() == "unknown" or len(git_commit().split("+")[0]) == 40
    assert git_commit(tmp_path) == "unknown"  # not a checkout
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"source": "egoexo4d", "split": "val", "num_clips": 3, "takes": [{}, {}]}))
    fields = data_manifest(str(tmp_path))
    assert fields["num_clips"] == 3 and fields["num_takes"] == 2 and fields["split"] == "val"
    assert len(fields["manifest_sha256"]) == 64
    assert data_manifest(None) is None
