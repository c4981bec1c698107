"""launch/tiny_sweep.sh: variants of the tiny config trained, exported and evaluated through the
real pipeline, each with its own overrides, run again only when unfinished."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHORT = ("--schedule.train_iters=2 --schedule.warmup_iters=1 --data.num_workers=0 "
         "--run.global_batch_size=8 --run.save_interval=2")


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "launch/tiny_sweep.sh", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def test_each_variant_trains_with_its_overrides_and_reports(tiny_run, tmp_path):
    out = tmp_path / "sweep"
    args = ["--demo", str(tiny_run["root"]), "--out", str(out), "--jobs", "2",
            f"plain={SHORT}", f"nce0={SHORT} --loss.predict_contrastive_weight=0"]
    done = _sweep(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()
            if line.split() and line.split()[0] in ("plain", "nce0")}
    assert set(rows) == {"plain", "nce0"}
    for name, row in rows.items():
        results = json.loads((out / name / "eval" / "results.json").read_text())
        # the table row is the variant's own results.json
        assert float(row[0]) == pytest.approx(results["retrieval"]["egoagent"]["top1"], abs=0.01)
        assert float(row[1]) == pytest.approx(
            results["retrieval"]["representation_only"]["top1"], abs=0.01)
        assert float(row[4]) == pytest.approx(results["motion"]["egoagent"]["mpjpe_30fps"],
                                              abs=0.01)
        config = yaml.safe_load((out / name / "config.yaml").read_text())
        assert config["run"]["output_dir"] == str(out / name)
        assert config["data"]["walking_tours_ratio"] == 0  # the fixture has no WalkingTours
    weights = {n: yaml.safe_load((out / n / "config.yaml").read_text())["loss"]
               ["predict_contrastive_weight"] for n in rows}
    assert weights == {"plain": 5.0, "nce0": 0.0}  # tiny_cpu's 5, and the override

    # a second sweep leaves finished variants alone
    stamp = (out / "plain" / "eval" / "results.json").stat().st_mtime_ns
    again = _sweep(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "plain" / "eval" / "results.json").stat().st_mtime_ns == stamp

    # the same name with other overrides is refused, not mixed into the finished folder
    other = _sweep("--demo", str(tiny_run["root"]), "--out", str(out),
                   f"plain={SHORT} --run.seed=3")
    assert other.returncode == 1
    assert "made with other overrides" in other.stderr
    assert (out / "plain" / "eval" / "results.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("args, message", [
    (["--demo", "/nonexistent/demo", "a="], "run 'make demo' first"),
    (["--demo", "{root}", "a/b=--run.seed=1"], "must be letters, digits"),
    (["--demo", "{root}", "plain"], "is not NAME="),
    (["--demo", "{root}"], "no variants given"),
])
def test_bad_arguments_stop_with_one_clear_line(tiny_run, args, message):
    done = _sweep(*[a.format(root=tiny_run["root"]) for a in args])
    assert done.returncode == 2
    assert message in done.stderr


def test_a_failed_variant_is_named_and_fails_the_sweep(tiny_run, tmp_path):
    done = _sweep("--demo", str(tiny_run["root"]), "--out", str(tmp_path),
                  f"bad={SHORT} --loss.no_such_key=1")
    assert done.returncode == 1
    assert "variant bad failed" in done.stderr
    assert "no_such_key" in (tmp_path / "bad" / "train.log").read_text()


def test_a_variant_made_with_another_config_is_refused(tiny_run, tmp_path):
    """--config (the demo's stage 1 is configs/tiny_cpu_stage1.yaml): a folder is never reused
    with another config, like with other overrides."""
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "overrides.txt").write_text(f"{SHORT}\n")
    (tmp_path / "v" / "config.txt").write_text("configs/tiny_cpu_stage1.yaml\n")
    done = _sweep("--demo", str(tiny_run["root"]), "--out", str(tmp_path), f"v={SHORT}")
    assert done.returncode == 1
    assert "made with --config configs/tiny_cpu_stage1.yaml" in done.stderr
    assert not (tmp_path / "v" / "train.log").exists()  # nothing was trained
