"""The learning-curve table (megatron_ego/eval/curve.py) reads each evaluated step of a run."""

from __future__ import annotations

import json

from megatron_ego.eval import curve


def _results(shuffled_ge10: float, low: float) -> dict:
    true = {"top1_rot_ge10": 6.0, "top1": 6.5, "direction_accuracy_rot_ge10": 61.0}
    return {"retrieval": {
        "egoagent": true, "representation_only": {"top1": 11.0},
        "egoagent_shuffled_actions": {"top1_rot_ge10": shuffled_ge10,
                                      "delta_top1_rot_ge10": 6.0 - shuffled_ge10,
                                      "delta_top1_rot_ge10_ci_low": low,
                                      "delta_top1_rot_ge10_ci_high": 3.0}},
        "knn": {"egoagent": {"top1": 60.0}},
        "motion": {"egoagent": {"mpjpe_30fps": 2.4}, "zero_velocity": {"mpjpe_30fps": 4.8}}}


def test_rows_follow_the_steps_and_the_losses(tmp_path, capsys):
    run = tmp_path / "lc0"
    for step, (shuffled, low) in ((1800, (4.0, 0.5)), (900, (5.5, -1.0))):
        folder = run / "curve" / f"step_{step}" / "eval"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(_results(shuffled, low)))
    (run / "curve" / "step_2700").mkdir()  # not evaluated (yet): left out
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss_predict": 6.0 - s / 1000}) + "\n" for s in range(1, 2001)))
    rows = curve.curve_rows(run)
    assert [r["step"] for r in rows] == [900, 1800]
    assert rows[1]["delta"] == (2.0, 0.5, 3.0)
    assert abs(rows[0]["loss_predict"] - (6.0 - 0.8905)) < 1e-9  # steps 881..900
    assert curve.main([str(run), "--figure", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "| lc0 | 1800 | 6.00 / 4.00 / n/a / n/a | 2.00 (0.50 to 3.00) | 61.00 |" in out
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_no_evaluated_step_is_an_error(tmp_path, capsys):
    assert curve.main([str(tmp_path)]) == 2
    assert "run launch/curve.sh first" in capsys.readouterr().err
