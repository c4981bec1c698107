"""Training micro-batches: the trainer's contract, determinism, resume, workers, mixing, errors."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_ego.config import load_config
from megatron_ego.data import IMAGENET_MEAN, IMAGENET_STD, build_train_loader, load_frame
from megatron_ego.data.augment import (
    VIEW_FIELDS,
    MultiCropSpec,
    crop_views,
    draw_init_crop,
    draw_multicrop,
    init_crop,
    pack_views,
)
from megatron_ego.data.clips import RawClip
from megatron_ego.data.decode import decode_rgb
from megatron_ego.data.loader import (
    MicroBatchDataset,
    auto_workers,
    local_ranks,
    make_loader,
    sample_rng,
)
from megatron_ego.data.mix import EGOEXO4D, WALKING_TOURS, EpochOrder
from megatron_ego.data.on_device import to_device
from megatron_ego.data.photometric import photometric
from megatron_ego.data.photometric_torch import normalize_torch, photometric_torch

T, P, J = 4, 5, 17
CPU = torch.device("cpu")
SPEC = MultiCropSpec(global_size=32, local_size=16, num_global=2, num_local=3)


def _jpeg(array: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


class FakeClips:
    """Synthetic RawClips (JPEG frames), as ClipDataset yields them; picklable for workers."""

    encoding = "jpeg"

    def __init__(self, count: int, frame_size=(40, 48), clips: bool = True, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.count, self.frame_size, self.clips = count, frame_size, clips
        self.pool = [_jpeg(rng.integers(0, 256, (*frame_size, 3), dtype=np.uint8))
                     for _ in range(7)]
        self.poses = rng.standard_normal((count, T * P, J, 4)).astype(np.float32)
        self.poses[..., 3] = rng.random((count, T * P, J))  # visibility in [0, 1], as stored

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> RawClip:
        if not self.clips:
            return RawClip([self.pool[i % 7]], None, "walk", i)
        return RawClip([self.pool[(i + t) % 7] for t in range(T)], self.poses[i], "take", i)


def _dataset(seed=0, rank=0, world_size=1, ratio=0.0, b=3, spec=SPEC, ego=None,
             mix_mode="micro_step"):
    sources = {EGOEXO4D: ego or FakeClips(40)}
    if ratio:
        sources[WALKING_TOURS] = FakeClips(50, frame_size=(36, 64), clips=False, seed=1)
    return MicroBatchDataset(sources, spec, seed=seed, rank=rank, world_size=world_size,
                             micro_batch_size=b, walking_tours_ratio=ratio, mix_mode=mix_mode)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a["source"] == b["source"]
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def _normalised_range() -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (0 - mean) / std - 1e-5, (1 - mean) / std + 1e-5


def test_egoexo4d_micro_batch_follows_the_contract():
    dataset = _dataset(seed=4, rank=1, world_size=2)
    clips = dataset.sources[EGOEXO4D]
    raw = dataset[2]  # what a worker hands over
    assert set(raw) == {"source", "frames", "poses", "global_crops", "global_views",
                        "local_crops", "local_views", "anchor_step", "index", "bad_records",
                        "drawn", "counts"}
    assert raw["bad_records"] == [] and raw["drawn"] == 3
    assert raw["source"] == "egoexo4d" and raw["counts"] == {"egoexo4d": 3}
    assert raw["frames"].shape == (3, T, 3, 32, 32) and raw["frames"].dtype == torch.uint8
    assert raw["poses"].shape == (3, T, 4, P, J) and raw["poses"].dtype == torch.float32
    assert raw["global_crops"].shape == (3, 2, 3, 32, 32)
    assert raw["local_crops"].shape == (3, 3, 3, 16, 16)
    assert raw["global_crops"].dtype == raw["local_crops"].dtype == torch.uint8
    assert raw["global_views"].shape == (3, 2, VIEW_FIELDS)
    assert raw["local_views"].shape == (3, 3, VIEW_FIELDS)
    assert raw["global_views"].dtype == raw["local_views"].dtype == torch.float64
    assert raw["anchor_step"].dtype == raw["index"].dtype == torch.int64
    order = EpochOrder(40, seed=4, source=EGOEXO4D, world_size=2, micro_batch_size=3)
    np.testing.assert_array_equal(raw["index"].numpy(), order.indices(2, rank=1))
    batch = to_device(raw, CPU)  # what the model reads
    assert "global_views" not in batch and "local_views" not in batch
    lo, hi = _normalised_range()
    for key in ("frames", "global_crops", "local_crops"):
        assert batch[key].dtype == torch.float32 and batch[key].shape == raw[key].shape
        assert ((batch[key] >= lo) & (batch[key] <= hi)).all(), key
    for j, index in enumerate(batch["index"].tolist()):
        clip = clips[index]
        stored = torch.from_numpy(clip.poses)  # [T*P, J, 4]
        for t, p, k, c in [(0, 0, 0, 0), (3, 4, 16, 3), (2, 1, 5, 2)]:
            assert batch["poses"][j, t, c, p, k] == stored[t * P + p, k, c]
        for t in range(T):  # whole frames, resized, normalised: what evaluation loads
            torch.testing.assert_close(batch["frames"][j, t], load_frame(clip.frames[t], "jpeg", 32))
        # the crops are the anchor frame's, drawn from the sample's own (seed, k, rank, j) stream
        rng = sample_rng(4, 2, 1, j)
        anchor = int(rng.integers(T))
        views_g, views_l = draw_multicrop(rng, clips.frame_size, SPEC)
        image = decode_rgb(clip.frames[anchor], "jpeg")
        assert batch["anchor_step"][j] == anchor
        crops_g = crop_views(image, views_g, 32, clips.frame_size)
        crops_l = crop_views(image, views_l, 16, clips.frame_size)
        assert torch.equal(raw["global_crops"][j], crops_g)
        assert torch.equal(raw["local_crops"][j], crops_l)
        np.testing.assert_array_equal(raw["global_views"][j].numpy(), pack_views(views_g))
        np.testing.assert_array_equal(raw["local_views"][j].numpy(), pack_views(views_l))
        # the float path the workers ran before this hand-off, bit for bit
        assert torch.equal(batch["global_crops"][j], photometric(crops_g, views_g))
        assert torch.equal(batch["local_crops"][j], photometric(crops_l, views_l))


def test_crops_are_cut_from_the_first_crop_drawn_before_the_views():
    """data.init_crop_size (DoRA's first crop): each sample's stream draws the anchor, then the
    first crop's box, then the views in its square; the crops are those views of that box
    resized, bit for bit, for clips and WalkingTours frames alike."""
    spec = MultiCropSpec(global_size=32, local_size=16, num_global=2, num_local=3, init_size=36)
    for ratio, source in ((0.0, None), (1.0, FakeClips(50, frame_size=(36, 64), clips=False,
                                                       seed=1))):
        dataset = _dataset(seed=4, ratio=ratio, spec=spec)
        raw = dataset[2]
        data = source or dataset.sources[EGOEXO4D]
        for j, index in enumerate(raw["index"].tolist()):
            rng = sample_rng(4, 2, 0, j)
            sample = data[index]
            anchor = int(rng.integers(T)) if source is None else 0
            init = draw_init_crop(rng, data.frame_size, spec)
            views_g, views_l = draw_multicrop(rng, (36, 36), spec)
            image = init_crop(decode_rgb(sample.frames[anchor], "jpeg"), init, 36,
                              data.frame_size)  # [3, 36, 36]
            assert torch.equal(raw["global_crops"][j], crop_views(image, views_g, 32, (36, 36)))
            assert torch.equal(raw["local_crops"][j], crop_views(image, views_l, 16, (36, 36)))
            np.testing.assert_array_equal(raw["global_views"][j].numpy(), pack_views(views_g))
    plain = _dataset(seed=4)[2]  # the first crop changes what the views show
    assert not torch.equal(plain["global_crops"], _dataset(seed=4, spec=spec)[2]["global_crops"])


@pytest.mark.parametrize("photometric_ops", [False, True])
def test_the_gpu_path_matches_the_cpu_path(photometric_ops):
    """finish_images' torch ops (what a GPU runs; run here on the CPU) against the numba
    kernels: 1e-6 with normalisation only, float32 rounding with the photometric ops."""
    spec = MultiCropSpec(global_size=32, local_size=16, num_global=2, num_local=3,
                         photometric=photometric_ops)
    raw = _dataset(seed=1, b=4, spec=spec)[0]
    batch = to_device(raw, CPU)
    torch.testing.assert_close(normalize_torch(raw["frames"].flatten(0, 1)),
                               batch["frames"].flatten(0, 1), atol=1e-6, rtol=0)
    for kind in ("global", "local"):
        got = photometric_torch(raw[f"{kind}_crops"].flatten(0, 1),
                                raw[f"{kind}_views"].flatten(0, 1))
        want = batch[f"{kind}_crops"].flatten(0, 1)
        torch.testing.assert_close(got, want, atol=1e-6 if not photometric_ops else 1e-5, rtol=0)


class RawFakeClips(FakeClips):
    """The same clips stored raw ([H, W, 3] uint8 frames, `encoding: raw`)."""

    encoding = "raw"

    def __getitem__(self, i: int) -> RawClip:
        clip = super().__getitem__(i)
        clip.frames = [decode_rgb(f, "jpeg").permute(1, 2, 0).numpy() for f in clip.frames]
        return clip


def test_raw_encoded_frames_give_the_same_kind_of_batch():
    batch = _dataset(ego=RawFakeClips(20))[1]
    assert batch["frames"].shape == (3, T, 3, 32, 32)
    assert batch["global_crops"].shape == (3, 2, 3, 32, 32)
    jpeg = _dataset(ego=FakeClips(20))[1]  # same draws; only the decoding path differs
    torch.testing.assert_close(batch["frames"], jpeg["frames"])
    torch.testing.assert_close(batch["global_crops"], jpeg["global_crops"])


def test_walking_tours_micro_batch_and_no_local_crops():
    spec = MultiCropSpec(global_size=32, local_size=16, num_global=2, num_local=0)
    dataset = _dataset(ratio=1.0, spec=spec)
    batch = dataset[0]
    assert set(batch) == {"source", "global_crops", "global_views", "local_crops", "local_views",
                          "index", "bad_records", "drawn", "counts"}
    assert batch["source"] == "walking_tours"
    assert batch["global_crops"].shape == (3, 2, 3, 32, 32)
    assert batch["local_crops"].shape == (3, 0, 3, 16, 16)
    assert batch["index"].max() < 50
    assert to_device(batch, CPU)["local_crops"].shape == (3, 0, 3, 16, 16)


def test_same_seed_and_step_give_the_same_batch_and_seeds_differ():
    _assert_same(_dataset(seed=0)[5], _dataset(seed=0)[5])
    a, b = _dataset(seed=0)[5], _dataset(seed=1)[5]
    assert not torch.equal(a["global_crops"], b["global_crops"])
    assert not torch.equal(a["index"], b["index"])


def test_resumed_loader_and_any_worker_count_yield_the_same_micro_batches():
    dataset = _dataset(seed=2, ratio=0.5)
    uninterrupted = list(itertools.islice(make_loader(dataset, 0, num_workers=0), 6))
    assert {b["source"] for b in uninterrupted} == {EGOEXO4D, WALKING_TOURS}
    resumed = list(itertools.islice(make_loader(dataset, 3, num_workers=2, prefetch_factor=2), 3))
    for a, b in zip(uninterrupted[3:], resumed):
        _assert_same(a, b)
        assert b["global_crops"].dtype == torch.uint8  # through the workers' shared memory


def test_sources_agree_across_ranks_and_ranks_read_disjoint_samples():
    ranks = [_dataset(seed=5, rank=r, world_size=2, ratio=0.5, b=2) for r in range(2)]
    seen = {EGOEXO4D: [], WALKING_TOURS: []}
    for k in range(8):
        batches = [ranks[r][k] for r in range(2)]
        assert batches[0]["source"] == batches[1]["source"]
        seen[batches[0]["source"]] += [b["index"] for b in batches]
    for source, (count, per_epoch) in {EGOEXO4D: (40, 40), WALKING_TOURS: (50, 48)}.items():
        indices = torch.cat(seen[source][: per_epoch // 2]).tolist()  # within the first epoch
        assert len(indices) == len(set(indices)) and max(indices, default=0) < count


def test_within_batch_micro_batches_hold_both_sources_in_the_same_numbers_on_every_rank():
    ranks = [_dataset(seed=5, rank=r, world_size=2, ratio=0.4, b=5, mix_mode="within_batch")
             for r in range(2)]
    reference = _dataset(seed=5, rank=0, world_size=2, ratio=0.4, b=5)  # homogeneous mode
    seen = {EGOEXO4D: [], WALKING_TOURS: []}
    for k in range(6):
        batches = [ranks[r][k] for r in range(2)]
        counts = batches[0]["counts"]
        assert counts == batches[1]["counts"] and counts[WALKING_TOURS] == 2  # 0.4 x 5
        for batch in batches:
            e = counts[EGOEXO4D]
            assert batch["source"] == "mixed" and batch["sequence_share"] == e / 5
            assert batch["frames"].shape[0] == batch["poses"].shape[0] == e
            assert batch["global_crops"].shape[:2] == (5, SPEC.num_global)
            assert batch["local_crops"].shape[:2] == (5, SPEC.num_local)
            assert batch["global_views"].shape[:2] == (5, SPEC.num_global)
            assert batch["local_views"].shape[:2] == (5, SPEC.num_local)
            seen[EGOEXO4D].append(batch["index"][:e])
            seen[WALKING_TOURS].append(batch["index"][e:])
    for source in seen:  # 6 micro-steps x 2 ranks stay inside the first epoch: no repeats
        indices = torch.cat(seen[source]).tolist()
        assert len(indices) == len(set(indices))
    again = _dataset(seed=5, rank=1, world_size=2, ratio=0.4, b=5, mix_mode="within_batch")
    _assert_same(again[4], ranks[1][4])  # a pure function of (seed, step, rank): exact resume
    assert reference[0]["counts"] == {reference[0]["source"]: 5}


def test_clips_that_do_not_match_the_model_are_refused():
    short = FakeClips(20)
    short.poses = short.poses[:, :15]  # 3 steps of poses for a 4-step model
    with pytest.raises(ValueError, match=r"model\.num_steps=4.*preprocess\.egoexo4d"):
        _dataset(ego=short)[0]


def test_missing_datasets_name_the_config_key_and_the_command(tmp_path):
    cfg = load_config(None, [f"--data.egoexo4d_path={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match=r"data\.egoexo4d_path=.*python -m preprocess\.egoexo4d"):
        build_train_loader(cfg, rank=0, world_size=1)
    cfg = load_config(None, ["--data.egoexo4d_path=", f"--data.walking_tours_path={tmp_path}",
                             "--data.walking_tours_ratio=1.0"])
    with pytest.raises(FileNotFoundError, match=r"data\.walking_tours_path=.*preprocess\.walking_tours"):
        build_train_loader(cfg, rank=0, world_size=1)


def _write_preprocessed(out: str, walking: bool) -> None:
    """A tiny dataset directory written by preprocess's own sharded writer."""
    from preprocess.sharded_run import Unit, run_sharded

    fake = FakeClips(12, frame_size=(40, 40), clips=not walking)

    def process(unit, writer, stats):
        if walking:
            for frame in fake.pool:
                writer.add_frame(frame)
            writer.end_take()
            return {"name": unit.name, "uid": unit.uid, "num_frames": 7, "num_clips": 0}
        clips = np.array([[0, 5 * i] + [(i + t) % 7 for t in range(T)] for i in range(12)])
        camera = np.tile(np.eye(3, 4, dtype=np.float32), (12, T * P, 1, 1))  # [12, 20, 3, 4]
        writer.add_take(fake.pool, clips, fake.poses, camera)
        return {"name": unit.name, "uid": unit.uid, "num_frames": 7, "num_clips": 12}

    manifest = {"source": "walking_tours" if walking else "egoexo4d", "split": "train",
                "encoding": "jpeg", "frame_height": 40, "frame_width": 40, "frame_fps": 6,
                "pose_fps": 30, "num_steps": T, "poses_per_step": P}
    run_sharded(out, [Unit("a", "ua")], process, with_clips=not walking, units_per_shard=1,
                options={}, manifest=manifest)


def test_build_train_loader_reads_preprocessed_directories(tmp_path):
    ego, walk = str(tmp_path / "egoexo4d"), str(tmp_path / "walking_tours")
    _write_preprocessed(ego, walking=False)
    _write_preprocessed(walk, walking=True)
    cfg = load_config(None, [
        f"--data.egoexo4d_path={ego}", f"--data.walking_tours_path={walk}",
        "--data.walking_tours_ratio=0.5", "--data.num_workers=0", "--data.num_local_crops=2",
        "--model.image_size=32", "--model.local_crop_size=16", "--run.micro_batch_size=2",
        "--run.global_batch_size=4", "--run.seed=3",
    ])
    batches = list(itertools.islice(build_train_loader(cfg, rank=1, world_size=2), 6))
    sources = {b["source"] for b in batches}
    assert sources == {EGOEXO4D, WALKING_TOURS}
    for batch in batches:
        assert batch["global_crops"].shape == (2, 2, 3, 32, 32)
        assert batch["local_crops"].shape == (2, 2, 3, 16, 16)
        if batch["source"] == EGOEXO4D:
            assert batch["frames"].shape == (2, T, 3, 32, 32)
            assert batch["poses"].shape == (2, T, 4, P, J)
    resumed = next(build_train_loader(cfg, rank=1, world_size=2, start_micro_step=4))
    _assert_same(batches[4], resumed)


def test_loader_workers_are_sized_from_the_cores_per_rank():
    assert auto_workers(cpus=96, ranks=8) == 11  # one core per rank left to the training process
    assert auto_workers(cpus=2, ranks=1) == 1
    assert auto_workers(cpus=4, ranks=8) == 1  # fewer cores than ranks: still one worker
    assert auto_workers(cpus=256, ranks=1) == 16  # capped: more workers only hold more memory
    assert auto_workers(cpus=256, ranks=1, cap=64) == 64
    assert local_ranks({"LOCAL_WORLD_SIZE": "4"}, world_size=16) == 4  # torchrun
    assert local_ranks({"LOCAL_SIZE": "2"}, world_size=16) == 2  # deepspeed's launcher
    assert local_ranks({}, world_size=3) == 3  # unknown: as if all ranks shared this machine
    assert local_ranks({"LOCAL_WORLD_SIZE": ""}, world_size=1) == 1


def test_num_workers_null_means_sized_from_the_machine(monkeypatch, tmp_path):
    from megatron_ego.data import loader

    assert load_config(None).data.num_workers is None  # the default
    assert load_config(None, ["--data.num_workers=3"]).data.num_workers == 3
    assert load_config(None, ["--data.num_workers=null"]).data.num_workers is None
    monkeypatch.setattr(loader, "_usable_cpus", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader._num_workers(None, world_size=4) == 7
    assert loader._num_workers(0, world_size=4) == 0  # an explicit value wins
