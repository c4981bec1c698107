"""The demo's own check: every loss term must go down between the first and last 20 steps."""

from __future__ import annotations

import json

from megatron_ego.eval.demo_summary import loss_trend, main


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_trend_uses_only_the_steps_that_trained_a_term(tmp_path):
    rows = []
    for step in range(1, 81):
        row = {"step": step, "loss_represent": 10.0 - step / 10}
        if step % 2:  # Ego-Exo4D steps carry the other terms; WalkingTours steps do not
            row.update(loss_act=1.0, loss_predict=5.0 + step / 100)
        rows.append(row)
    _write(tmp_path / "metrics.jsonl", rows)
    trend = loss_trend(tmp_path / "metrics.jsonl")
    assert trend["loss_represent"][0] > trend["loss_represent"][1]
    first, last = trend["loss_predict"]
    assert first < last  # rising: must be reported as not down
    assert trend["loss_act"] == (1.0, 1.0)
    assert main(["--run", str(tmp_path), "--strict"]) == 1
    assert main(["--run", str(tmp_path)]) == 0  # reported, not fatal, without --strict


def test_all_terms_down_passes(tmp_path):
    rows = [{"step": s, "loss_represent": 9 - s / 50, "loss_predict": 8 - s / 50,
             "loss_act": 1 - s / 100} for s in range(1, 61)]
    _write(tmp_path / "metrics.jsonl", rows)
    assert main(["--run", str(tmp_path), "--strict"]) == 0


def test_summary_prints_retrieval_by_rotation(tmp_path, capsys):
    rows = [{"step": s, "loss_represent": 9 - s / 50} for s in range(1, 61)]
    _write(tmp_path / "metrics.jsonl", rows)
    (tmp_path / "eval").mkdir()
    ego = {"top1": 15.6, "top1_rot_lt2": 21.5, "top1_rot_2to10": 12.5, "top1_rot_ge10": 11.7,
           "num_queries_rot_ge10": 250, "num_transitions_rot_ge10": 212,
           "direction_accuracy": 47.0, "direction_accuracy_rot_ge10": 45.8}
    rep = {"top1": 19.6, "top1_rot_ge10": 8.0, "direction_accuracy_rot_ge10": None}
    (tmp_path / "eval" / "results.json").write_text(json.dumps(
        {"retrieval": {"egoagent": ego, "representation_only": rep}}))
    assert main(["--run", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "top-1 %, >= 10 deg                    250          212     11.70        8.00" in out
    assert "direction %, >= 10 deg" in out and "45.80         n/a" in out
