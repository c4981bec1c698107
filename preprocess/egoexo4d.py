"""Ego-Exo4D -> Megatron indexed dataset of clips (docs/data_format.md).

    python -m preprocess.egoexo4d --root RAW_DIR --out OUT_DIR [--split train|val] [--size 448]
    mpirun -n 8 python -m preprocess.egoexo4d --root RAW_DIR --out OUT_DIR   # takes over ranks

For every take of the split that has body-pose labels (manual labels win over automatic ones,
frame by frame): find the take's own Aria camera (its takes.json metadata; `ego_pose`), read
that camera's extrinsics (either camera_pose layout; a null or malformed matrix drops that frame
only), cut 20-frame windows of continuous poses (starts every --stride frames), decode the
frames those windows use (1 in 5, 6 fps) with PyAV, undistort the fisheye frames when the take
has its calibration (needs projectaria_tools), resize to --size (448: Ego-Exo4D's downscaled
size, which the authors' release undistorts too), store as JPEG (or raw), express each pose in the
camera frame of its own frame with a visibility channel, and store each frame's camera pose
relative to its clip's first frame. A take with a truncated video or a broken JSON is skipped
and counted by reason in stats.json; the run goes on. --exclude-bouldering leaves out the takes
whose name contains "bouldering", as the authors' release does.

stats.json: takes_found, takes_kept, takes_excluded/bouldering, takes_skipped/{
annotation_malformed, no_poses, camera_pose_missing, camera_pose_malformed,
aria_camera_ambiguous, aria_camera_missing, no_valid_window, video_missing, video_unreadable,
calibration_missing, not_in_takes_json}, aria_camera/{takes_json, inferred} (kept takes by where
their Aria camera's name came from: takes.json, or the only Aria key / video),
extrinsics_frames_skipped/{null, malformed}, windows_kept, windows_skipped/{pose_gap,
extrinsics_missing, beyond_video}, frames_stored, pose_frames/{manual, automatic} (labelled
frames inside kept windows, by the label that won), and `skipped`: [{take, reason, detail}].
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Any

import numpy as np

from megatron_ego.cli_help import make_parser
from preprocess.ego_pose import (
    AnnotationError,
    AriaCameraError,
    aria_camera_name,
    merge_manual_automatic,
    read_aria_camera,
    read_body_poses,
)
from preprocess.sharded_run import Unit, run_sharded
from preprocess.shards import ShardWriter
from preprocess.stats import Stats
from preprocess.undistort import find_calibration, make_undistorter, require_projectaria
from preprocess.video import VideoError, decode_frames, encode_frame, probe_size
from preprocess.windows import (
    IMAGE_STEP,
    image_frames,
    plan_windows,
    window_camera,
    window_poses,
)

__all__ = ["discover_takes", "main", "process_take"]

POSES_PER_STEP = 5
VIDEO_SUFFIX = "_214-1.mp4"  # the Aria RGB stream's frame-aligned video


def _aria_video(take_dir: str, camera: str | None) -> str | None:
    """The take's downscaled Aria RGB video: the named camera's, else the only one.

    Raises:
        AriaCameraError: no name and two or more Aria videos.
    """
    folder = os.path.join(take_dir, "frame_aligned_videos", "downscaled", "448")
    if camera is not None:
        path = os.path.join(folder, camera + VIDEO_SUFFIX)
        return path if os.path.isfile(path) else None
    videos = sorted(glob.glob(os.path.join(folder, "aria*" + VIDEO_SUFFIX)))
    if len(videos) > 1:
        raise AriaCameraError(f"{folder}: {len(videos)} Aria videos and no camera name to choose "
                              f"one", "aria_camera_ambiguous")
    return videos[0] if videos else None


def discover_takes(root: str, split: str) -> list[Unit]:
    """Every take of `split` with a body annotation file, sorted by take name.

    Raises:
        FileNotFoundError / ValueError: takes.json or the annotation directory is missing/bad.
    """
    takes_path = os.path.join(root, "takes.json")
    if not os.path.isfile(takes_path):
        raise FileNotFoundError(f"{takes_path} not found: --root must be the Ego-Exo4D root "
                                f"(it holds takes.json, takes/ and annotations/)")
    with open(takes_path) as f:
        entries = json.load(f)
    entries = entries.get("takes", entries) if isinstance(entries, dict) else entries
    by_uid = {e["take_uid"]: e for e in entries}
    body = os.path.join(root, "annotations", "ego_pose", split, "body")
    if not os.path.isdir(body):
        raise FileNotFoundError(f"{body} not found: no body-pose labels for split {split!r}")
    files: dict[str, dict[str, str]] = {}
    for source, folder in (("manual", "annotation"), ("automatic", "automatic")):
        for path in glob.glob(os.path.join(body, folder, "*.json")):
            files.setdefault(os.path.basename(path)[: -len(".json")], {})[source] = path
    units = []
    for uid, labels in files.items():
        entry = by_uid.get(uid, {})
        name = entry.get("take_name", uid)
        try:
            aria, aria_error = aria_camera_name(entry), None
        except AriaCameraError as err:
            aria, aria_error = None, str(err)
        units.append(Unit(name, uid, {
            **labels, "known": uid in by_uid,
            "take_dir": os.path.join(root, entry.get("root_dir", f"takes/{name}")),
            "aria_camera": aria, "aria_error": aria_error,
            "bouldering": "bouldering" in name.lower(),
            "camera": os.path.join(root, "annotations", "ego_pose", split, "camera_pose",
                                   f"{uid}.json"),
        }))
    return sorted(units, key=lambda u: (u.name, u.uid))


def _load_labels(unit: Unit, stats: Stats):
    """Body poses and Aria extrinsics of a take, or None after counting why not."""
    inputs = unit.inputs
    try:
        manual = read_body_poses(inputs["manual"], "manual") if "manual" in inputs else None
        automatic = (read_body_poses(inputs["automatic"], "automatic")
                     if "automatic" in inputs else None)
    except AnnotationError as err:
        return stats.skip(unit.name, "annotation_malformed", str(err))
    poses = merge_manual_automatic(manual, automatic)
    if not poses.joints:
        return stats.skip(unit.name, "no_poses", "the body files hold no 3D joints")
    if inputs["aria_error"] is not None:
        return stats.skip(unit.name, "aria_camera_ambiguous", inputs["aria_error"])
    if not os.path.isfile(inputs["camera"]):
        return stats.skip(unit.name, "camera_pose_missing", inputs["camera"])
    try:
        camera = read_aria_camera(inputs["camera"], inputs["aria_camera"])
    except AriaCameraError as err:
        return stats.skip(unit.name, err.reason, str(err))
    except AnnotationError as err:
        return stats.skip(unit.name, "camera_pose_malformed", str(err))
    for reason, n in camera.skipped_frames.items():
        stats.count(f"extrinsics_frames_skipped/{reason}", n)
    return poses, camera


def process_take(unit: Unit, writer: ShardWriter, stats: Stats, opts: argparse.Namespace
                 ) -> dict[str, Any] | None:
    """Write one take's frames, poses and clips into the shard; None (counted) if skipped."""
    stats.count("takes_found")
    if opts.exclude_bouldering and unit.inputs["bouldering"]:
        stats.count("takes_excluded/bouldering")
        return None
    if not unit.inputs["known"]:
        stats.skip(unit.name, "not_in_takes_json", "labels for a take_uid missing in takes.json")
        return None
    labels = _load_labels(unit, stats)
    if labels is None:
        return None
    poses, camera = labels
    extrinsics = camera.extrinsics
    aria = unit.inputs["aria_camera"]
    if aria is None and camera.name and camera.name.lower() != "aria":
        aria = camera.name  # the only Aria key of the camera file names the device
    length = opts.num_steps * POSES_PER_STEP
    starts, skipped = plan_windows(set(poses.joints), set(extrinsics), length, opts.stride)
    for reason, n in skipped.items():
        stats.count(f"windows_skipped/{reason}", n)
    if not starts:
        return stats.skip(unit.name, "no_valid_window", f"no {length} continuous labelled frames")
    try:
        video = _aria_video(unit.inputs["take_dir"], aria)
    except AriaCameraError as err:
        return stats.skip(unit.name, err.reason, str(err))
    if video is None:
        return stats.skip(unit.name, "video_missing", f"{unit.inputs['take_dir']} ({aria})")
    aria = os.path.basename(video)[: -len(VIDEO_SUFFIX)]  # recorded in the manifest

    transform = None
    calibration = (find_calibration(unit.inputs["take_dir"], aria)
                   if opts.undistort != "off" else None)
    if opts.undistort == "on" and calibration is None:
        return stats.skip(unit.name, "calibration_missing", "no *_noimagestreams.vrs in take")
    wanted = sorted({f for s in starts for f in image_frames(s, opts.num_steps)})
    try:
        if calibration is not None:
            height, width = probe_size(video)
            transform = make_undistorter(calibration, width, height)
        decoded, _ = decode_frames(video, wanted, (opts.size, opts.size), transform)
    except VideoError as err:
        return stats.skip(unit.name, "video_unreadable", str(err))

    kept = [s for s in starts if all(f in decoded for f in image_frames(s, opts.num_steps))]
    stats.count("windows_skipped/beyond_video", len(starts) - len(kept))
    if not kept:
        return stats.skip(unit.name, "no_valid_window", "the video ends before every window")
    used = sorted({f for s in kept for f in image_frames(s, opts.num_steps)})
    index = {frame: i for i, frame in enumerate(used)}
    frames = [encode_frame(decoded[f], opts.encoding, opts.jpeg_quality) for f in used]
    clips = np.array([[0, s, *(index[f] for f in image_frames(s, opts.num_steps))] for s in kept])
    pose_tensors = np.stack([window_poses(poses, extrinsics, s, length) for s in kept])
    motion = np.stack([window_camera(extrinsics, s, length) for s in kept])  # [n, 20, 3, 4]
    writer.add_take(frames, clips, pose_tensors, motion)  # [n, 2 + T], [n, 20, 17, 4]
    stats.count("takes_kept")
    stats.count("aria_camera/takes_json" if unit.inputs["aria_camera"] else "aria_camera/inferred")
    stats.count("windows_kept", len(kept))
    stats.count("frames_stored", len(used))
    labelled = {f for s in kept for f in range(s, s + length)}
    for frame in labelled:
        stats.count(f"pose_frames/{poses.source[frame]}")
    return {"name": unit.name, "uid": unit.uid, "num_frames": len(used), "num_clips": len(kept),
            "aria_camera": aria}


def _parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--root", required=True, help="Ego-Exo4D root (takes.json, takes/, annotations/)")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--split", default="train", choices=["train", "val"], help="official split")
    p.add_argument("--size", type=int, default=448,
                   help="stored frame side in pixels (448: Ego-Exo4D's downscaled videos, as the "
                        "authors' release; the paper's 1408 px originals are not read; the demo "
                        "stores 128)")
    p.add_argument("--encoding", default="jpeg", choices=["jpeg", "raw"])
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--stride", type=int, default=5, help="frames between window starts (x5)")
    p.add_argument("--num-steps", type=int, default=4, help="T images per clip (20 poses at 4)")
    p.add_argument("--undistort", default="auto", choices=["auto", "on", "off"],
                   help="fisheye->pinhole with projectaria_tools: auto = where a take has its "
                        "*_noimagestreams.vrs calibration")
    p.add_argument("--exclude-bouldering", action="store_true",
                   help="leave out takes whose name contains 'bouldering' (the authors' release)")
    p.add_argument("--takes-per-shard", type=int, default=8, help="unit of work and of resuming")
    p.add_argument("--limit", type=int, default=0, help="only the first N takes (0: all)")
    p.add_argument("--keep-shards", action="store_true", help="keep OUT/.shards after merging")
    p.add_argument("--overwrite", action="store_true", help="rebuild a complete OUT")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = _parser()
    opts = parser.parse_args(argv)
    if opts.stride <= 0 or opts.stride % IMAGE_STEP:
        parser.error(f"--stride must be a positive multiple of {IMAGE_STEP}")
    if opts.size < 16 or not 1 <= opts.jpeg_quality <= 100 or opts.num_steps < 2:
        parser.error("need --size >= 16, 1 <= --jpeg-quality <= 100 and --num-steps >= 2")
    units = discover_takes(opts.root, opts.split)
    if opts.limit:
        units = units[: opts.limit]
    if not units:
        parser.error(f"no body-pose label files under {opts.root}/annotations/ego_pose/"
                     f"{opts.split}/body/{{annotation,automatic}}/")
    if opts.undistort == "on" or (opts.undistort == "auto" and any(
            find_calibration(u.inputs["take_dir"], u.inputs["aria_camera"]) for u in units)):
        require_projectaria()  # fail now, with the fix, rather than on every take
    options = {k: getattr(opts, k) for k in (
        "split", "size", "encoding", "jpeg_quality", "stride", "num_steps", "undistort",
        "exclude_bouldering")}
    manifest = {
        "source": "egoexo4d", "split": opts.split, "encoding": opts.encoding,
        "frame_height": opts.size, "frame_width": opts.size, "frame_fps": 30 // IMAGE_STEP,
        "pose_fps": 30, "num_steps": opts.num_steps, "poses_per_step": POSES_PER_STEP,
    }
    return run_sharded(
        opts.out, units, lambda unit, writer, stats: process_take(unit, writer, stats, opts),
        with_clips=True, units_per_shard=opts.takes_per_shard, options=options,
        manifest=manifest, keep_shards=opts.keep_shards, overwrite=opts.overwrite,
        desc="egoexo4d",
    )


if __name__ == "__main__":
    main()
