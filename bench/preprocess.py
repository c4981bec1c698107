"""Preprocessing throughput: our PyAV pipeline against JPEG extraction with the ffmpeg CLI.

    python bench/preprocess.py [--workdir runs/bench_preprocess] [--takes 2] [--seconds 20]

Input: demo-world takes rendered at 448 x 448, 30 fps, H.264 (Ego-Exo4D's downscaled/448
size). Both sides turn each video into 256 x 256 JPEG frames at 6 fps (1 frame in 5):

  ours    `python -m preprocess.egoexo4d --size 256` in this process (after imports): PyAV
          decode, libswscale resize, PIL JPEG (q 90), megatron IndexedDatasetBuilder, plus pose
          JSON parsing, windows, merge and manifest;
  ffmpeg  `ffmpeg -i aria01_214-1.mp4 -vf fps=6,scale=256:256 -q:v 2 out/%06d.jpg` per take, as
          the authors' release extracts frames (one JPEG file per frame);

and prints frames/s for each, their ratio, and the stored bytes per clip and per frame.

Needs: the ffmpeg CLI on PATH for the comparison (`apt-get install -y ffmpeg`; without it only
our side is timed). The project itself never calls it.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_ego.cli_help import make_parser  # noqa: E402
from preprocess import egoexo4d  # noqa: E402
from preprocess.demo_world import take_video_path, write_demo_world  # noqa: E402
from preprocess.video import decode_frames, encode_frame  # noqa: E402


def _ours(raw: str, out: str) -> tuple[float, int, dict]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = egoexo4d.main(["--root", raw, "--out", out, "--size", "256", "--undistort", "off"])
    return time.perf_counter() - start, manifest["num_frames"], manifest


def _ours_video_only(raw: str, takes: list[dict]) -> tuple[float, int]:
    """Just the video path of ours: decode, keep 1 in 5, resize, JPEG (no labels, no files)."""
    start, count = time.perf_counter(), 0
    for take in takes:
        path = take_video_path(raw, take["take_name"])
        frames, _ = decode_frames(path, range(0, 10**6, 5), (256, 256))
        count += sum(len(encode_frame(image, "jpeg", 90)) > 0 for image in frames.values())
    return time.perf_counter() - start, count


def _ffmpeg(raw: str, takes: list[dict], out: str) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    for take in takes:
        folder = os.path.join(out, take["take_name"])
        os.makedirs(folder)
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i",
                        take_video_path(raw, take["take_name"]), "-vf", "fps=6,scale=256:256",
                        "-q:v", "2", os.path.join(folder, "%06d.jpg")], check=True)
    return time.perf_counter() - start, len(glob.glob(os.path.join(out, "*", "*.jpg")))


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--workdir", default="runs/bench_preprocess",
                        help="folder for the generated takes (kept and reused) and both outputs")
    parser.add_argument("--takes", type=int, default=2, help="train takes are 3 of every 4")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each take")
    parser.add_argument("--repeats", type=int, default=5, help="best of N timings")
    args = parser.parse_args()
    raw = os.path.join(args.workdir, "raw")
    if not os.path.exists(os.path.join(raw, "takes.json")):
        write_demo_world(raw, takes=args.takes, seconds=args.seconds, resolution=448,
                         walking_tours=0, knn_train=0, knn_val=0)
    with open(os.path.join(raw, "takes.json")) as f:
        takes = [t for t in json.load(f) if os.path.exists(os.path.join(
            raw, "annotations", "ego_pose", "train", "camera_pose", f"{t['take_uid']}.json"))]
    video_frames = sum(int(round(t["duration_sec"] * 30)) for t in takes)

    have_ffmpeg = shutil.which("ffmpeg") is not None
    runs: dict[str, list] = {"ours": [], "video": [], "ffmpeg": []}
    for _ in range(args.repeats):  # interleaved, best of N: the machine may be shared
        runs["ours"].append(_ours(raw, os.path.join(args.workdir, "ours")))
        runs["video"].append(_ours_video_only(raw, takes))
        if have_ffmpeg:
            runs["ffmpeg"].append(_ffmpeg(raw, takes, os.path.join(args.workdir, "ffmpeg")))
    seconds, frames, manifest = min(runs["ours"], key=lambda r: r[0])
    seconds_v, frames_v = min(runs["video"])
    out = os.path.join(args.workdir, "ours")
    stored = sum(os.path.getsize(os.path.join(out, f"{n}.bin")) for n in ("frames", "poses",
                                                                          "clips"))
    frames_bin = os.path.getsize(os.path.join(out, "frames.bin"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; best of {args.repeats}, interleaved")
    print(f"input: {len(takes)} takes, {video_frames} frames of 448x448 H.264 at 30 fps")
    print(f"ours (full run):   {frames} JPEG frames in {seconds:.2f} s = "
          f"{frames / seconds:.1f} frames/s, {video_frames / seconds:.0f} video frames/s")
    print(f"ours (video only): {frames_v} JPEG frames in {seconds_v:.2f} s = "
          f"{frames_v / seconds_v:.1f} frames/s, {video_frames / seconds_v:.0f} video frames/s")
    print(f"stored: {manifest['num_clips']} clips, {stored / manifest['num_clips'] / 1e3:.1f} kB "
          f"per clip (frames+poses+clips .bin), {frames_bin / frames / 1e3:.1f} kB per frame")
    if not have_ffmpeg:
        print("ffmpeg: CLI not found (apt-get install -y ffmpeg); no comparison")
        return
    seconds_ff, frames_ff = min(runs["ffmpeg"])
    print(f"ffmpeg CLI:        {frames_ff} JPEG files in {seconds_ff:.2f} s = "
          f"{frames_ff / seconds_ff:.1f} frames/s, {video_frames / seconds_ff:.0f} video frames/s")
    print(f"ratio ours / ffmpeg, frames/s: full run {(frames / seconds) / (frames_ff / seconds_ff):.2f}"
          f", video only {(frames_v / seconds_v) / (frames_ff / seconds_ff):.2f}")


if __name__ == "__main__":
    main()
