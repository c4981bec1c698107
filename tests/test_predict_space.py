"""bench/predict_space.py: the export's retrieval in every query-vs-gallery space (issue 22 item
7), on the tiny run's export (teacher and student)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from megatron_ego.eval.run_retrieval import run_retrieval
from megatron_ego.inference import EgoAgent
from megatron_ego.runtime.processes import join_processes

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("predict_space", REPO / "bench/predict_space.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_space_table_rows_agree_where_their_spaces_coincide(tiny_run, agent, tmp_path, capsys):
    space = _script()
    assert space.main(["--model", str(tiny_run["export"]), "--data", str(tiny_run["val"]),
                       "--out", str(tmp_path), "--max-clips", "6", "--device", "cpu"]) == 0
    saved = json.loads((tmp_path / "space.json").read_text())
    results, cos = saved["results"], saved["cosines"]
    printed = capsys.readouterr().out
    assert all(label in printed for label, _, _ in space.ROWS)
    # the shipped row is what the predict benchmark scores on the export
    ranks = join_processes("cpu")
    direct = run_retrieval(agent, str(tiny_run["val"]), tmp_path / "direct", ranks,
                           max_clips=6, num_figures=0, workers=0, controls=False)
    for method in ("egoagent", "representation_only"):
        assert results["shipped"][method]["top1"] == pytest.approx(direct[method]["top1"])
        assert results["shipped"][method]["map"] == pytest.approx(direct[method]["map"])
    # the teacher's own space holds the same copying baseline as the shipped one
    assert results["teacher"]["representation_only"]["map"] == pytest.approx(
        results["shipped"]["representation_only"]["map"])
    # a network's rep(I_t) as the "prediction" against its own gallery is its copying baseline,
    # so the cross-network row measures only the change of network
    views = space.views(agent)
    student = views["student"]
    same = run_retrieval(space.RepQuery(student, student), str(tiny_run["val"]),
                         tmp_path / "same", ranks, max_clips=6, num_figures=0, workers=0, controls=False)
    assert same["egoagent"]["map"] == pytest.approx(
        results["student"]["representation_only"]["map"])
    assert results["student_rep"]["egoagent"]["map"] != pytest.approx(same["egoagent"]["map"])
    # pre-head and logit spaces differ; cosines are cosines
    assert results["pre_head"]["representation_only"]["map"] != pytest.approx(
        results["shipped"]["representation_only"]["map"])
    assert all(-1.0 <= value <= 1.0 for value in cos.values())


def test_an_export_with_one_network_is_refused(agent):
    single = EgoAgent(agent.module, agent.cfg, agent.device)
    with pytest.raises(SystemExit, match="one network"):
        _script().views(single)
