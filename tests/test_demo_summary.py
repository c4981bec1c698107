"""The demo's own check: every loss term must go down between the first and last 20 steps, or
be declared in the config as allowed to rise (loss.may_rise, with its reason)."""

from __future__ import annotations

import json

import pytest

from megatron_ego.config import ConfigError, load_config
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


def _stage2(tmp_path, may_rise: str) -> None:
    """A run whose DINO prediction term rises from 5.8 to 6.0 while everything else goes down;
    ``may_rise`` is the config's loss section lines."""
    (tmp_path / "config.yaml").write_text(
        "model:\n  head_out_dim: 1024\n  predict_head_init: represent\nloss:\n" + may_rise
        + "run:\n  init_from: runs/demo/stage1\n")
    rows = [{"step": s, "loss_represent": 5.4 - s / 1000, "loss_act": 8 - s / 10,
             "loss_predict": 5.8 + 0.2 * s / 60,
             "loss_predict_contrastive": 6 - s / 20} for s in range(1, 61)]
    _write(tmp_path / "metrics.jsonl", rows)


def test_a_rise_fails_even_below_ln_k_unless_the_config_allows_it(tmp_path, capsys):
    _stage2(tmp_path, "  koleo_weight: 0.1\n")  # warm-started head, still below ln K = 6.93
    assert main(["--run", str(tmp_path), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "ROSE" in out and "CHECK FAILED" in out and "check passed" not in out
    _stage2(tmp_path, "  may_rise: [loss_predict]\n  may_rise_reason: the contrastive term "
                      "leads\n")
    assert main(["--run", str(tmp_path), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "loss_predict" in out and " rose   (allowed" in out
    assert "loss_predict may rise in this config: the contrastive term leads" in out
    assert "except loss_predict, which rose" in out


def test_the_allowance_names_only_its_terms(tmp_path):
    _stage2(tmp_path, "  may_rise: [loss_act]\n  may_rise_reason: x\n")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r["loss_predict_contrastive"] = 1 + r["step"] / 100  # rising, and not allowed
    _write(tmp_path / "metrics.jsonl", rows)
    assert main(["--run", str(tmp_path), "--strict"]) == 1


@pytest.mark.parametrize(("overrides", "message"), [
    (["--loss.may_rise=[loss_foo]"], "names \\['loss_foo'\\], which no run logs"),
    (["--loss.may_rise=[loss_predict]"], "without loss.may_rise_reason"),
])
def test_may_rise_is_checked_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/tiny_cpu.yaml", overrides)
