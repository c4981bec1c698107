"""launch/evaluate.py on the tiny trained model (fixtures from conftest.py)."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

from launch import evaluate
from megatron_ego.export.format import read_export, write_export

CONTROLS = {"retrieval": ("delta_top1", "delta_direction_accuracy"),
            "motion": ("delta_mpjpe_30fps",)}  # each with _ci_low and _ci_high
METRICS = {
    "knn": {"egoagent": ("top1", "top5")},
    "retrieval": {m: ("top1", "map") for m in (
        "egoagent", "representation_only", "egoagent_shuffled_actions", "egoagent_zero_actions",
        "egoagent_next_actions")},
    "motion": {m: ("mpjpe_30fps", "mpjve_30fps", "mpjpe_10fps", "mpjve_10fps")
               for m in ("egoagent", "zero_velocity", "constant_velocity",
                         "egoagent_shuffled_images", "egoagent_no_images")},
}


def _args(run, out, *extra: str) -> list[str]:
    return ["--model", str(run["export"]), "--out", str(out), "--workers", "0",
            "--batch-size", "8", *extra]


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    knn = ["--knn-train", str(tiny_run["raw"] / "imagefolder" / "train"),
           "--knn-val", str(tiny_run["raw"] / "imagefolder" / "val")]
    # --data left out: the val split beside the config's training data is found on its own
    assert evaluate.main(_args(tiny_run, out, "--task", "all", *knn)) == 0
    return out, knn


def test_all_tasks_write_every_method_and_metric(evaluated):
    out, _ = evaluated
    results = json.loads((out / "results.json").read_text())
    assert results.keys() - {"provenance"} == METRICS.keys()
    for task, methods in METRICS.items():
        assert results[task].keys() == methods.keys(), task
        for method, metrics in methods.items():
            for metric in metrics:
                value = results[task][method][metric]
                assert isinstance(value, float) and math.isfinite(value), (task, method, metric)
                if metric in ("top1", "top5", "map"):
                    assert 0.0 <= value <= 100.0
    assert results["retrieval"]["egoagent"]["num_queries"] == 8 * 3  # 8 val clips x (T - 1)
    for method in ("egoagent", "representation_only"):  # split by the camera's motion
        got = results["retrieval"][method]
        for key in ("top1_rot_lt2", "top1_rot_2to10", "top1_rot_ge10", "map_rot_ge10",
                    "direction_accuracy", "direction_accuracy_rot_ge10",
                    "num_queries_rot_ge10", "num_transitions_rot_ge10"):
            assert key in got, (method, key)
        assert sum(got[f"num_queries_rot_{b}"] for b in ("lt2", "2to10", "ge10")) == 8 * 3
        assert sum(got[f"num_queries_trans_{b}"] for b in ("lt5cm", "5to15cm", "ge15cm")) == 24
        assert got["num_transitions_rot_ge10"] <= got["num_queries_rot_ge10"]
        assert got["num_direction_queries"] >= 8 * 2  # steps 1 and 2 always have I_{t-1}
    assert "### retrieval by camera motion" in (out / "results.md").read_text()
    for task, keys in CONTROLS.items():  # the controls: a delta and its interval each
        for method in METRICS[task]:
            got = results[task][method]
            if method.startswith("egoagent_"):
                for key in keys:
                    assert got[f"{key}_ci_low"] <= got[key] <= got[f"{key}_ci_high"], (method, key)
            else:
                assert not any(k.startswith("delta_") for k in got), method
    assert "### retrieval: input controls" in (out / "results.md").read_text()
    assert (out / "figures" / "top1_by_rotation.png").stat().st_size > 1000
    assert results["motion"]["egoagent"]["num_samples"] == 8
    assert "| representation_only |" in (out / "results.md").read_text()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert sum(n.startswith("motion_") for n in figures) == 3
    assert sum(n.startswith("retrieval_") for n in figures) == 3
    assert all((out / "figures" / n).stat().st_size > 1000 for n in figures)


def test_results_say_where_they_came_from(evaluated, tiny_run):
    from megatron_ego.eval.report import read_provenance, read_results

    out, _ = evaluated
    by_task = read_provenance(out / "results.json")
    assert by_task.keys() == METRICS.keys()
    prov = by_task["motion"]
    assert prov["command"].startswith("launch/evaluate.py --model ")
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", prov["git_commit"])
    assert prov["model"]["checkpoint_step"] == "4"
    assert prov["model"]["checkpoint"] == str(tiny_run["checkpoint"])
    assert prov["model"]["config"]["model"]["num_layers"] == 4  # the export's config.yaml
    manifest = json.loads((tiny_run["val"] / "manifest.json").read_text())
    assert prov["data"]["num_clips"] == manifest["num_clips"] and prov["data"]["split"] == "val"
    assert "provenance" not in read_results(out / "results.json")
    md = (out / "results.md").read_text()
    assert "## Provenance" in md and prov["git_commit"] in md and "(step 4)" in md


def test_eval_metrics_reach_the_runs_tensorboard_at_the_checkpoint_step(evaluated, tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = json.loads((evaluated[0] / "results.json").read_text())
    events = EventAccumulator(str(tiny_run["run"] / "tensorboard"))
    events.Reload()
    tag = "eval/motion/egoagent/mpjpe_30fps"
    assert tag in events.Tags()["scalars"]
    (point,) = [p for p in events.Scalars(tag) if p.step == 4]
    assert point.value == pytest.approx(results["motion"]["egoagent"]["mpjpe_30fps"], rel=1e-6)


def test_baselines_and_retrieval_indices_match_a_direct_computation(evaluated, tiny_run, agent):
    from megatron_ego.data.clips import ClipDataset
    from megatron_ego.data.decode import load_frame
    from megatron_ego.eval.baselines import constant_velocity
    from megatron_ego.eval.features import clip_table
    from megatron_ego.eval.motion import motion_metrics
    from megatron_ego.eval.retrieval import retrieval_metrics

    results = json.loads((evaluated[0] / "results.json").read_text())
    dataset = ClipDataset(str(tiny_run["val"]))
    poses = torch.from_numpy(np.stack([dataset[i].poses for i in range(len(dataset))]))
    want = motion_metrics(constant_velocity(poses[:, :5]), poses[:, 5:, :, :3],
                          poses[:, 5:, :, 3] > 0.5)
    assert results["motion"]["constant_velocity"]["mpjpe_30fps"] == pytest.approx(
        want["mpjpe_30fps"], rel=1e-9)
    # representation-only: query = frame t, target = frame t + 1, frame t left out
    table = clip_table(str(tiny_run["val"]))[:, 2:]  # [clips, T] stored frame indices
    frame_ids = np.unique(table)
    images = {}
    for i in range(len(dataset)):
        for t, frame in enumerate(dataset[i].frames):
            images[int(table[i, t])] = load_frame(frame, dataset.encoding, 64)
    _, gallery = agent.represent(torch.stack([images[int(f)] for f in frame_ids]),
                                 with_logits=True)
    rows = torch.from_numpy(np.searchsorted(frame_ids, table))  # [clips, T]
    exclude, target = rows[:, :-1].flatten(), rows[:, 1:].flatten()
    want = retrieval_metrics(gallery[exclude], gallery, target, exclude)
    got = results["retrieval"]["representation_only"]
    assert got["top1"] == pytest.approx(want["top1"]) and got["map"] == pytest.approx(want["map"])


def test_knn_features_are_cached_and_reused(evaluated, tiny_run):
    out, knn = evaluated
    cache = sorted((out / "features").glob("knn_*.pt"))
    assert [p.name for p in cache] == ["knn_train.rank00000-of-00001.pt",
                                       "knn_val.rank00000-of-00001.pt"]
    stamps = [p.stat().st_mtime_ns for p in cache]
    before = json.loads((out / "results.json").read_text())
    assert evaluate.main(_args(tiny_run, out, "--task", "knn", *knn)) == 0
    assert [p.stat().st_mtime_ns for p in cache] == stamps  # read, not rewritten
    after = json.loads((out / "results.json").read_text())
    prov_before, prov_after = before.pop("provenance"), after.pop("provenance")
    assert after == before  # knn identical, the other tasks kept (merged report)
    assert prov_after["motion"] == prov_before["motion"]  # kept with its task
    assert prov_after["knn"]["command"].endswith("--task knn " + " ".join(knn))  # this run


def test_motion_rollout_never_sees_the_true_future(tiny_run, agent, monkeypatch):
    from megatron_ego.eval import features, run_motion

    ids = np.arange(3)
    honest = run_motion.rollout(agent, str(tiny_run["val"]), ids, batch_size=4, workers=0)
    original = features.ValClips.__getitem__

    def corrupted(self, i):
        frames, poses, clip = original(self, i)
        poses[5:] = float("nan")  # any read of the true future would poison the predictions
        return frames, poses, clip

    monkeypatch.setattr(features.ValClips, "__getitem__", corrupted)
    blind = run_motion.rollout(agent, str(tiny_run["val"]), ids, batch_size=4, workers=0)
    assert torch.equal(blind["pred"], honest["pred"]) and torch.isfinite(blind["pred"]).all()


def _export_with(tiny_run, tmp_path, **model):
    cfg, weights, meta = read_export(tiny_run["export"])
    for key, value in model.items():
        setattr(cfg.model, key, value)
    write_export(weights, cfg, tmp_path / "model", meta)
    return tmp_path / "model"


@pytest.mark.parametrize(("case", "message"), [
    ("missing_data", "--data .*does not exist: preprocess the val split"),
    ("missing_knn", "--knn-val .*does not exist"),
    ("knn_without_folders", "--task knn needs --knn-train and --knn-val"),
    ("missing_model", "does not exist: export a checkpoint first"),
    ("other_shape", "does not fit the model its config.yaml describes"),
    ("image_size", "stores 64x64 frames, smaller than the model's image_size=128"),
    ("knn_classes", "different class folders"),
])
def test_errors_are_one_clear_line(tiny_run, tmp_path, capsys, case, message):
    model, extra = tiny_run["export"], ["--task", "motion", "--data", str(tiny_run["val"])]
    folders = tiny_run["raw"] / "imagefolder"
    if case == "missing_data":
        extra = ["--task", "retrieval", "--data", str(tmp_path / "val")]
    elif case == "missing_knn":
        extra = ["--knn-train", str(folders / "train"), "--knn-val", str(tmp_path / "v")]
    elif case == "knn_without_folders":
        extra = ["--task", "knn"]
    elif case == "missing_model":
        model = tmp_path / "nothing"
    elif case == "other_shape":
        model = _export_with(tiny_run, tmp_path, ffn_hidden_size=256)
    elif case == "image_size":
        model = _export_with(tiny_run, tmp_path, image_size=128)
    elif case == "knn_classes":
        shutil.copytree(folders / "val", tmp_path / "val")
        shutil.rmtree(next((tmp_path / "val").iterdir()))
        extra = ["--task", "knn", "--knn-train", str(folders / "train"),
                 "--knn-val", str(tmp_path / "val")]
    args = ["--model", str(model), "--out", str(tmp_path / "out"), "--workers", "0", *extra]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("paper, ours", [("represent", "knn"), ("predict", "retrieval"),
                                         ("act", "motion"), ("motion", "motion")])
def test_task_accepts_the_paper_names(paper, ours):
    args = evaluate.parse_args(["--model", "m", "--out", "o", "--task", paper])
    assert args.task == ours  # TASK=act in launch/slurm/evaluate.sbatch
