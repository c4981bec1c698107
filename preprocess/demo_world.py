"""Write a small raw dataset in Ego-Exo4D's own layout, from a rendered world of photographs.

    python -m preprocess.demo_world --out runs/demo/raw [--takes 8] [--seconds 20] [--seed 0]

A walker strolls, turns, stops and looks around in a room whose walls show real photographs
(scikit-image's bundled samples); the camera rides the head; the 17 joints follow a gait, the
torso turning before the head (`demo_motion`). Written under --out:

  takes.json                                                  take_name / take_uid per take (and
                                                              capture.cameras: aria01 is_ego,
                                                              except every third take)
  takes/<take>/frame_aligned_videos/downscaled/448/aria01_214-1.mp4   H.264, 30 fps, pinhole
  annotations/ego_pose/{train,val}/body/{annotation,automatic}/<uid>.json
  annotations/ego_pose/{train,val}/camera_pose/<uid>.json     both layouts (`demo_layout`)
  walking_tours/walk_<k>.mp4                                  16:9, 60 fps, no poses
  imagefolder/{train,val}/<photograph>/<k>.png                k-NN set: class = the photograph
  ground_truth/<uid>.npz                                      outside the Ego-Exo4D layout:
      joints_cam [N, 17, 3] float64 (camera frame, metres), visible [N, 17], labelled [N],
      manual [N], has_extrinsics [N], extrinsics [N, 3, 4], frame_index [M] (every 5th frame),
      frames [M, H, W, 3] uint8 (clean renders of those frames), intrinsics [3, 3], split,
      camera_layout ("per_camera" | "per_frame")

The video is rendered at --resolution (the path says 448 as Ego-Exo4D's does; the stored
training resolution is chosen when preprocessing). Deterministic for a given --seed.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from megatron_ego.cli_help import make_parser
from megatron_ego.progress import progress
from preprocess.demo_layout import ARIA, plan_labels, write_body_json, write_camera_json
from preprocess.demo_motion import body_and_camera, simulate_walk
from preprocess.demo_scene import Room, pinhole_intrinsics

__all__ = [
    "encode_video", "look_at", "main", "take_video_path", "texture_resolution", "write_demo_world",
]

FPS = 30
FOV_DEG = 90.0
VIDEO_NAME = f"{ARIA}_214-1.mp4"


def take_video_path(root: str, take_name: str) -> str:
    """Where Ego-Exo4D keeps a take's downscaled, frame-aligned Aria video."""
    return os.path.join(root, "takes", take_name, "frame_aligned_videos", "downscaled", "448",
                        VIDEO_NAME)


def encode_video(path: str, frames: Iterable[np.ndarray], fps: int, crf: int = 8) -> None:
    """Encode [H, W, 3] uint8 RGB frames as H.264 (yuv420p) into an MP4 with PyAV."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w") as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode(None):
                container.mux(packet)


def texture_resolution(resolution: int) -> int:
    """Wall texels per metre matched to the video: about one texel per pixel at 1.5 m.

    Finer textures would alias into noise that no video codec keeps (and no camera sees).
    """
    focal = 0.5 * resolution / np.tan(np.radians(FOV_DEG) / 2)  # pixels
    return max(16, int(round(focal / 1.5)))


def look_at(forward: np.ndarray) -> np.ndarray:
    """World->camera rotation [3, 3] (OpenCV axes) of a camera looking along `forward` [3]."""
    f = forward / np.linalg.norm(forward)
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(f, right), f])


@dataclass
class TakePlan:
    """Everything of one take that the world's random stream decides (drawn in take order);
    rendering it draws nothing, so takes can be rendered in any order or process."""

    name: str
    uid: str
    split: str
    R: np.ndarray  # [N, 3, 3] world -> camera rotations
    centre: np.ndarray  # [N, 3] camera centres, metres
    K: np.ndarray  # [3, 3] intrinsics
    joints_cam: np.ndarray  # [N, 17, 3] camera frame, metres
    extrinsics: np.ndarray  # [N, 3, 4] world -> camera
    labels: object  # demo_layout.TakeLabels
    size: int


def _plan_take(root: str, room_size: tuple[float, float], index: int, split: str, seconds: float,
               size: int, rng: np.random.Generator) -> tuple[TakePlan, dict]:
    """Draw one take's walk and labels, write its annotation JSONs; returns its plan and its
    takes.json entry."""
    name = f"demoworld_walk_{index:02d}_1"
    uid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    num_frames = int(round(seconds * FPS))
    walk = simulate_walk(num_frames, FPS, room_size, rng)
    joints_world, R, centre = body_and_camera(walk)  # [N, 17, 3], [N, 3, 3], [N, 3]
    extrinsics = np.concatenate([R, -R @ centre[:, :, None]], axis=2)  # [N, 3, 4] world->camera
    joints_cam = np.einsum("nij,nkj->nki", R, joints_world - centre[:, None])  # [N, 17, 3]
    K = pinhole_intrinsics(size, size, FOV_DEG)
    labels = plan_labels(index, num_frames, FPS, rng)
    write_body_json(root, split, uid, name, joints_world, labels, rng)
    write_camera_json(root, split, uid, name, extrinsics, K, labels)
    entry = {"take_uid": uid, "take_name": name, "root_dir": f"takes/{name}",
             "task_name": "Demo world walk", "duration_sec": seconds}
    if index % 3 != 2:  # the others leave the reader to find the only Aria camera itself
        entry["capture"] = {"cameras": [
            {"cam_id": ARIA, "is_ego": True, "device_type": "aria"},
            {"cam_id": "cam01", "is_ego": False, "device_type": "gopro"}]}
    return TakePlan(name, uid, split, R, centre, K, joints_cam, extrinsics, labels, size), entry


def _render_take(root: str, room: Room, plan: TakePlan) -> None:
    """Render and encode a planned take's video, and write its ground truth."""
    kept = []

    def frames() -> Iterable[np.ndarray]:
        for k in range(len(plan.R)):
            image = room.render(plan.R[k], plan.centre[k], plan.K, plan.size, plan.size)[0]
            if k % 5 == 0:
                kept.append(image)  # [H, W, 3]
            yield image

    encode_video(take_video_path(root, plan.name), frames(), FPS)
    os.makedirs(os.path.join(root, "ground_truth"), exist_ok=True)
    labels = plan.labels
    np.savez_compressed(
        os.path.join(root, "ground_truth", f"{plan.uid}.npz"),
        joints_cam=plan.joints_cam, visible=labels.visible, labelled=labels.labelled,
        manual=labels.manual, has_extrinsics=labels.extrinsics, extrinsics=plan.extrinsics,
        frame_index=np.arange(0, len(plan.R), 5), frames=np.stack(kept), intrinsics=plan.K,
        split=plan.split, camera_layout=labels.camera_layout,
    )


_WORKER_ROOM: dict[str, Room] = {}


def _render_in_worker(args: tuple[str, int, TakePlan]) -> str:
    """Pool task: render one take with this worker's room (built once per worker)."""
    root, px_per_m, plan = args
    if px_per_m not in _WORKER_ROOM:
        _WORKER_ROOM[px_per_m] = Room(px_per_m=px_per_m)
    _render_take(root, _WORKER_ROOM[px_per_m], plan)
    return plan.name


def _write_walking_tours(root: str, room: Room, count: int, seconds: float, size: int,
                         rng: np.random.Generator) -> None:
    height, width, fps = size, size * 16 // 9 // 2 * 2, 60
    K = pinhole_intrinsics(width, height, FOV_DEG)
    for k in range(count):
        walk = simulate_walk(int(seconds * fps), fps, room.size, rng)
        _, R, centre = body_and_camera(walk)
        frames = (room.render(R[i], centre[i], K, height, width)[0] for i in range(len(R)))
        encode_video(os.path.join(root, "walking_tours", f"walk_{k:02d}.mp4"), frames, fps)


def _write_imagefolder(root: str, room: Room, per_class: dict[str, int], size: int,
                       rng: np.random.Generator) -> None:
    K = pinhole_intrinsics(size, size, FOV_DEG)
    lo, hi = np.array([0.8, 0.8]), np.array(room.size) - 0.8
    for subset, count in per_class.items():
        for panel, photo in enumerate(room.panel_names):
            folder = os.path.join(root, "imagefolder", subset, photo)
            os.makedirs(folder, exist_ok=True)
            made = 0
            while made < count:
                target, normal = room.panel_centre(panel)
                eye = np.array([*rng.uniform(lo, hi), rng.uniform(1.3, 1.8)])
                if np.dot(eye - target, normal) < 1.0:  # too close to, or behind, the wall
                    continue
                forward = target + rng.normal(0, [0.25, 0.25, 0.2]) - eye
                image, shown = room.render(look_at(forward), eye, K, size, size)
                if shown[size // 2, size // 2] != panel or (shown == panel).mean() < 0.1:
                    continue
                Image.fromarray(image).save(os.path.join(folder, f"{made:03d}.png"))
                made += 1


def write_demo_world(out: str, takes: int = 8, seconds: float = 20.0, seed: int = 0,
                     resolution: int = 160, walking_tours: int = 2,
                     walking_tours_seconds: float = 8.0, knn_train: int = 12,
                     knn_val: int = 6, workers: int = 1) -> list[dict]:
    """Write the whole demo raw dataset under `out` (see the module docstring); returns takes.json.

    Every 4th take (index 3, 7, ...) goes to the val split, the others to train. The random
    stream is drawn in take order in this process; ``workers`` processes render the takes'
    videos (the same files for any number of workers).
    """
    rng = np.random.default_rng(seed)
    room = Room(px_per_m=texture_resolution(resolution))
    os.makedirs(out, exist_ok=True)
    plans, entries = [], []
    for index in range(takes):
        plan, entry = _plan_take(out, room.size, index, "val" if index % 4 == 3 else "train",
                                 seconds, resolution, rng)
        plans.append(plan)
        entries.append(entry)
    bar = progress(total=takes, desc="demo takes", unit="take")
    if workers > 1 and takes > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(workers, takes)) as pool:
            for _ in pool.imap_unordered(_render_in_worker,
                                         [(out, room.px_per_m, plan) for plan in plans]):
                bar.update(1)
    else:
        for plan in plans:
            _render_take(out, room, plan)
            bar.update(1)
    bar.close()
    with open(os.path.join(out, "takes.json"), "w") as f:
        json.dump(entries, f, indent=1)
    _write_walking_tours(out, room, walking_tours, walking_tours_seconds, resolution // 2 * 2, rng)
    _write_imagefolder(out, room, {"train": knn_train, "val": knn_val}, resolution, rng)
    return entries


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--out", required=True, help="directory to write the raw dataset into")
    parser.add_argument("--takes", type=int, default=8, help="Ego-Exo4D-like takes (every 4th: val)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each take (30 fps)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same world")
    parser.add_argument("--resolution", type=int, default=160,
                        help="video side in pixels (square takes; WalkingTours 16:9 at this height)")
    parser.add_argument("--walking-tours", type=int, default=2, help="WalkingTours-like videos")
    parser.add_argument("--walking-tours-seconds", type=float, default=8.0)
    parser.add_argument("--knn-train", type=int, default=12, help="k-NN train images per class")
    parser.add_argument("--knn-val", type=int, default=6, help="k-NN val images per class")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes rendering the takes (the same world for any number)")
    args = parser.parse_args(argv)
    if args.takes < 1 or args.seconds < 1 or args.resolution < 32 or args.workers < 1:
        parser.error("need --takes >= 1, --seconds >= 1, --resolution >= 32 and --workers >= 1")
    write_demo_world(args.out, args.takes, args.seconds, args.seed, args.resolution,
                     args.walking_tours, args.walking_tours_seconds, args.knn_train, args.knn_val,
                     args.workers)
    print(f"demo world written to {args.out}")


if __name__ == "__main__":
    main()
