"""WalkingTours videos -> Megatron indexed dataset of single frames (no poses).

    python -m preprocess.walking_tours --videos DIR_OR_FILES... --out OUT_DIR [--fps 6]
    mpirun -n 4 python -m preprocess.walking_tours --videos DIR --out OUT_DIR

Each video (4K, 60 fps, 1-3 h in the real set) is decoded as a stream with PyAV and sampled at
--fps by timestamp; frames are resized (shorter side --size, aspect of the first video kept
for all) while converting to RGB, and stored as JPEG or raw, one document per video. A video
that cannot be opened is skipped; one that breaks part-way keeps the frames read before the
break; both are counted in stats.json.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
from typing import Any

from megatron_ego.cli_help import make_parser
from preprocess.sharded_run import Unit, run_sharded
from preprocess.shards import ShardWriter
from preprocess.stats import Stats
from preprocess.video import (
    VideoError,
    encode_frame,
    frames_at_rate,
    probe_size,
    shorter_side_size,
)

__all__ = ["find_videos", "main", "process_video"]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi")
log = logging.getLogger("preprocess")


def find_videos(paths: list[str]) -> list[Unit]:
    """Video files given directly or found (not recursively) in the given directories."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += [p for p in glob.glob(os.path.join(path, "*"))
                      if p.lower().endswith(VIDEO_EXTENSIONS)]
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"--videos {path}: no such file or directory")
    names = [os.path.splitext(os.path.basename(p))[0] for p in sorted(files)]
    if len(set(names)) != len(names):
        raise ValueError("two videos share a file name; their names identify them in the output")
    return [Unit(name, name, {"path": path}) for name, path in zip(names, sorted(files))]


def process_video(unit: Unit, writer: ShardWriter, stats: Stats, opts: argparse.Namespace,
                  size: tuple[int, int]) -> dict[str, Any] | None:
    """Stream one video's frames at opts.fps into the shard; None (counted) if unreadable."""
    stats.count("takes_found")

    def fixed_size(height: int, width: int) -> tuple[int, int]:
        if (height, width) != size:
            log.warning("%s: resized to %dx%d (its aspect differs from the first video)",
                        unit.name, size[1], size[0])
        return size

    count = 0
    try:
        for image in frames_at_rate(unit.inputs["path"], opts.fps, opts.size, fixed_size):
            writer.add_frame(encode_frame(image, opts.encoding, opts.jpeg_quality))
            count += 1
    except VideoError as err:
        if count == 0:
            return stats.skip(unit.name, "video_unreadable", str(err))
        stats.count("takes_truncated")
        log.warning("%s broke after %d frames, kept them: %s", unit.name, count, err)
    if count == 0:
        return stats.skip(unit.name, "no_frames", "the video holds no frames")
    writer.end_take()
    stats.count("takes_kept")
    stats.count("frames_stored", count)
    return {"name": unit.name, "uid": unit.uid, "num_frames": count, "num_clips": 0}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = make_parser(__doc__)
    p.add_argument("--videos", nargs="+", required=True, help="video files or directories")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--fps", type=float, default=6.0, help="frames kept per second of video")
    p.add_argument("--size", type=int, default=600,
                   help="stored shorter side in pixels (600: the smallest at which no 300 px first "
                        "crop of a 16:9 frame is resized up, bench/first_crop.py; the release "
                        "reads the 4K originals; the demo stores 128)")
    p.add_argument("--encoding", default="jpeg", choices=["jpeg", "raw"])
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--videos-per-shard", type=int, default=1, help="unit of work and resuming")
    p.add_argument("--keep-shards", action="store_true", help="keep OUT/.shards after merging")
    p.add_argument("--overwrite", action="store_true", help="rebuild a complete OUT")
    opts = p.parse_args(argv)
    if opts.fps <= 0 or opts.size < 16 or not 1 <= opts.jpeg_quality <= 100:
        p.error("need --fps > 0, --size >= 16 and 1 <= --jpeg-quality <= 100")
    units = find_videos(opts.videos)
    if not units:
        p.error(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in {opts.videos}")
    size = None
    for unit in units:  # the first readable video fixes the stored (h, w) for all
        try:
            size = shorter_side_size(*probe_size(unit.inputs["path"]), opts.size)
            break
        except VideoError:
            continue
    if size is None:
        p.error("none of the videos can be opened")
    options = {k: getattr(opts, k) for k in ("fps", "size", "encoding", "jpeg_quality")}
    manifest = {
        "source": "walking_tours", "split": "train", "encoding": opts.encoding,
        "frame_height": size[0], "frame_width": size[1], "frame_fps": opts.fps, "pose_fps": 0,
        "num_steps": 1, "poses_per_step": 0,
    }
    return run_sharded(
        opts.out, units,
        lambda unit, writer, stats: process_video(unit, writer, stats, opts, size),
        with_clips=False, units_per_shard=opts.videos_per_shard, options=options,
        manifest=manifest, keep_shards=opts.keep_shards, overwrite=opts.overwrite,
        desc="walking_tours",
    )


if __name__ == "__main__":
    main()
