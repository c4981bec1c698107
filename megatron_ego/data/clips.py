"""Read preprocessed clips (docs/data_format.md): the stable API between preprocess/ and training.

    ds = ClipDataset("data/egoexo4d/train")
    clip = ds[0]                 # RawClip
    clip.frames                  # T x (1-D uint8 JPEG buffer | [H, W, 3] uint8)
    clip.poses                   # float32 [20, 17, 4] (x, y, z metres in the camera frame; vis)
    clip.camera                  # float32 [20, 3, 4] each frame's camera pose in frame 0's frame
    images = [decode_frame(f) for f in clip.frames]  # T x [H, W, 3] uint8 RGB

An Ego-Exo4D directory yields clips (T images at 6 fps + 20 poses at 30 fps); a WalkingTours
directory yields single frames (`frames` has one entry, `poses` and `camera` are None). Opening reads
manifest.json and memory-maps the files; the object pickles by path, so DataLoader workers
re-open the maps instead of copying data. Every record read is checked against its crc32
(data/checksums.py) when preprocessing wrote them, and a clip whose frames leave its take or
run out of order is found at open; either raises ValueError naming the file and record when
read (the loader skips and counts it).
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from megatron_ego.data.checksums import RecordChecksums
from megatron_ego.data.indexed import IndexedDataError, open_indexed

log = logging.getLogger(__name__)

__all__ = ["ClipDataset", "RawClip", "decode_frame"]

FORMAT_VERSION = 2  # 2 added `camera` (each clip's camera motion); older datasets are refused


@dataclass
class RawClip:
    """One undecoded training sample.

    Attributes:
        frames: T frames at 6 fps (T = manifest num_steps; 1 for WalkingTours), each a 1-D uint8
            JPEG buffer (`encoding == "jpeg"`) or an [H, W, 3] uint8 RGB array (`"raw"`). The
            arrays are copies: they stay valid after the dataset is gone (megatron's
            IndexedDataset unmaps its file when deleted) and may be written into.
        poses: float32 [20, 17, 4] (T * poses_per_step poses at 30 fps; COCO joints; x, y, z in
            metres in the egocentric camera frame of each pose's own frame, and visibility 0/1),
            or None for WalkingTours.
        take: name of the Ego-Exo4D take or WalkingTours video the sample comes from.
        start_frame: Ego-Exo4D: the 30 fps frame number of the clip's first image and pose.
            WalkingTours: the index of the frame among its video's stored 6 fps frames.
        frame_ids: the record index of each frame in frames.bin (to name a frame that fails
            to decode).
        camera: float32 [20, 3, 4] (one per pose, 30 fps): [R | t] of that frame's camera in
            the camera frame of the clip's first frame (p_first = R p_frame + t; t in metres;
            index 0 is [I | 0]), or None for WalkingTours.
    """

    frames: list[np.ndarray]
    poses: np.ndarray | None
    take: str
    start_frame: int
    frame_ids: tuple[int, ...] = ()
    camera: np.ndarray | None = None


def decode_frame(frame: np.ndarray) -> np.ndarray:
    """A stored frame as [H, W, 3] uint8 RGB: decodes a 1-D JPEG buffer, passes raw ones through."""
    if frame.ndim == 3:
        return frame
    from PIL import Image

    with Image.open(io.BytesIO(frame.tobytes())) as image:
        return np.asarray(image.convert("RGB"))


class ClipDataset:
    """Samples of one preprocessed dataset directory (one source, one split).

    Args:
        path: the directory written by `python -m preprocess.egoexo4d --out` or
            `python -m preprocess.walking_tours --out` (holds manifest.json, frames.bin/.idx and,
            for Ego-Exo4D, poses, camera and clips .bin/.idx).

    Raises:
        FileNotFoundError: no manifest.json in `path` (preprocessing not run or not finished).
        ValueError: the manifest is of an unknown source.
        IndexedDataError: the manifest is unreadable or of another format version (an older
            preprocessing run: re-run it), or a `.bin`/`.idx` file is missing or damaged.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        manifest_path = os.path.join(path, "manifest.json")
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(
                f"{manifest_path} not found: {path} is not a finished preprocessed dataset; run "
                f"`python -m preprocess.egoexo4d --out {path}` (or preprocess.walking_tours) first"
            )
        try:
            with open(manifest_path) as f:
                self._manifest: dict[str, Any] = json.load(f)
            if not isinstance(self._manifest, dict):
                raise ValueError(f"a JSON {type(self._manifest).__name__}, not an object")
        except (OSError, ValueError) as err:
            raise IndexedDataError(
                f"{manifest_path} is not a readable manifest ({err}): it was cut short or "
                f"damaged; re-run preprocessing (python -m preprocess.egoexo4d / "
                f"preprocess.walking_tours --out {path}) to rebuild it"
            ) from err
        version = self._manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexedDataError(
                f"{manifest_path} has format_version={version}, this code reads "
                f"{FORMAT_VERSION} (version 2 stores each clip's camera motion): re-run "
                f"preprocessing (python -m preprocess.egoexo4d / preprocess.walking_tours --out "
                f"{path}) with this version of the code"
            )
        if self.source not in ("egoexo4d", "walking_tours"):
            raise ValueError(f"{manifest_path}: unknown source {self.source!r}")
        self._frames = open_indexed(os.path.join(path, "frames"), np.uint8)
        self._poses = self._camera = self._clips = None
        if self.source == "egoexo4d":
            self._poses = open_indexed(os.path.join(path, "poses"), np.float32)
            self._camera = open_indexed(os.path.join(path, "camera"), np.float32)
            self._clips = open_indexed(os.path.join(path, "clips"), np.int64)
            if not len(self._clips) == len(self._poses) == len(self._camera):
                raise IndexedDataError(
                    f"{path}: clips ({len(self._clips)}), poses ({len(self._poses)}) and camera "
                    f"({len(self._camera)}) disagree; re-run preprocessing"
                )
        takes = self._manifest["takes"]
        self._take_names = [t["name"] for t in takes]
        self._take_first_frame = np.array([t["first_frame"] for t in takes], dtype=np.int64)
        self._take_num_frames = np.array([t["num_frames"] for t in takes], dtype=np.int64)
        self._bad_clips: dict[int, str] = {}
        if self._clips is not None:
            self._check_clip_table()
        self._sums = {name: RecordChecksums.open(path, name, len(ds), self._manifest)
                      for name, ds in (("frames", self._frames), ("poses", self._poses),
                                       ("camera", self._camera), ("clips", self._clips))
                      if ds is not None}
        if all(sums is None for sums in self._sums.values()):
            log.warning("%s has no record checksums (preprocessed before they existed): its "
                        "records are not verified when read; re-run preprocessing to add them",
                        path)

    def _check_clip_table(self) -> None:
        """Every clip row is [take, start frame, T frame ids] with ids that exist (vectorised:
        one read of clips.bin, ~8 (2 + T) bytes per clip), and every poses record has T P
        poses and one 3x4 camera pose per pose; a damaged clips.bin would otherwise fail hours in, or
        read another clip."""
        T = int(self._manifest["num_steps"])
        num_poses = T * int(self._manifest["poses_per_step"])
        where = f"{os.path.join(self.path, 'clips.bin')}"
        hint = f"re-run preprocessing (python -m preprocess.egoexo4d --out {self.path})"
        lengths = self._clips.index.sequence_lengths  # [clips] int32
        if len(lengths) and not (lengths == 2 + T).all():
            bad = int(np.flatnonzero(lengths != 2 + T)[0])
            raise IndexedDataError(f"{where}: clip {bad} has {int(lengths[bad])} values, "
                                   f"expected 2 + num_steps = {2 + T}: {hint}")
        pose_lengths = self._poses.index.sequence_lengths  # [clips] int32
        if len(pose_lengths) and (pose_lengths % (num_poses * 4) != 0).any():
            bad = int(np.flatnonzero(pose_lengths % (num_poses * 4))[0])
            raise IndexedDataError(f"{os.path.join(self.path, 'poses.bin')}: clip {bad} holds "
                                   f"{int(pose_lengths[bad])} values, not {num_poses} poses: {hint}")
        camera_lengths = self._camera.index.sequence_lengths  # [clips] int32
        if len(camera_lengths) and not (camera_lengths == num_poses * 12).all():
            bad = int(np.flatnonzero(camera_lengths != num_poses * 12)[0])
            raise IndexedDataError(f"{os.path.join(self.path, 'camera.bin')}: clip {bad} holds "
                                   f"{int(camera_lengths[bad])} values, not {num_poses} 3x4 camera "
                                   f"poses: {hint}")
        table = np.fromfile(where, dtype=np.int64).reshape(-1, 2 + T)  # [clips, 2 + T]
        takes_ok = (table[:, 0] >= 0) & (table[:, 0] < len(self._take_names))
        frames_ok = ((table[:, 2:] >= 0) & (table[:, 2:] < len(self._frames))).all(axis=1)
        if not (takes_ok & frames_ok).all():
            bad = int(np.flatnonzero(~(takes_ok & frames_ok))[0])
            raise IndexedDataError(
                f"{where}: clip {bad} names take {int(table[bad, 0])} / frames "
                f"{table[bad, 2:].tolist()}, outside the {len(self._take_names)} takes and "
                f"{len(self._frames)} frames of this dataset: {hint}")
        self._check_clip_frames(table, where)

    def _check_clip_frames(self, table: np.ndarray, where: str) -> None:
        """Every frame of a clip belongs to its clip's take and the ids increase (vectorised).
        A clip that breaks this (a frame id swapped for another take's, or out of order) is
        named here and, like a record that fails to decode, skipped and counted when drawn."""
        first = self._take_first_frame[table[:, 0]][:, None]  # [clips, 1]
        ids = table[:, 2:]  # [clips, T]
        in_take = (ids >= first) & (ids < first + self._take_num_frames[table[:, 0]][:, None])
        ordered = (np.diff(ids, axis=1) > 0).all(axis=1)  # [clips]
        for clip in np.flatnonzero(~(in_take.all(axis=1) & ordered)).tolist():
            take = int(table[clip, 0])
            self._bad_clips[clip] = (
                f"{where} record {clip}: frames {ids[clip].tolist()} are not in increasing "
                f"order within take {take} ({self._take_names[take]}: frames "
                f"{int(first[clip, 0])} to {int(first[clip, 0] + self._take_num_frames[take]) - 1})")
        if self._bad_clips:
            log.warning("%s: %d clips name frames outside their take or out of order (they "
                        "are skipped and counted when drawn), e.g. %s", self.path,
                        len(self._bad_clips), next(iter(self._bad_clips.values())))

    def bad_clip(self, i: int) -> str | None:
        """Why clip i's row of the clip table is unusable (found at open), or None."""
        return self._bad_clips.get(int(i))

    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed manifest.json (see docs/data_format.md)."""
        return self._manifest

    @property
    def source(self) -> str:
        """`"egoexo4d"` (clips with poses) or `"walking_tours"` (single frames, no poses)."""
        return self._manifest["source"]

    @property
    def encoding(self) -> str:
        """`"jpeg"` (frames are 1-D JPEG buffers) or `"raw"` ([H, W, 3] uint8)."""
        return self._manifest["encoding"]

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of every stored frame, in pixels."""
        return int(self._manifest["frame_height"]), int(self._manifest["frame_width"])

    def __len__(self) -> int:
        """Clips (Ego-Exo4D) or frames (WalkingTours)."""
        if self._clips is not None:
            return len(self._clips)
        return len(self._frames)

    def _read(self, name: str, dataset, index: int) -> np.ndarray:
        """Record `index` of `name` copied out of its memory map, checked against its crc32."""
        data = np.array(dataset[index])
        if self._sums.get(name) is not None:
            self._sums[name].check(index, data)
        return data

    def _frame(self, index: int) -> np.ndarray:
        data = self._read("frames", self._frames, index)  # [bytes] uint8
        if self.encoding == "raw":
            height, width = self.frame_size
            return data.reshape(height, width, 3)  # [H, W, 3]
        return data

    def poses(self, i: int) -> np.ndarray:
        """Clip i's stored poses, float32 [T * P, J, 4] (a copy; no frame is read)."""
        if self._poses is None:
            raise ValueError(f"{self.path} holds {self.source} frames without poses")
        num_poses = int(self._manifest["num_steps"]) * int(self._manifest["poses_per_step"])
        return self._read("poses", self._poses, int(i)).reshape(num_poses, -1, 4)

    def __getitem__(self, i: int) -> RawClip:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {self.path} ({len(self)} samples)")
        i = int(i) % len(self)
        if self._clips is None:
            take = int(np.searchsorted(self._take_first_frame, i, side="right")) - 1
            return RawClip(
                frames=[self._frame(i)],
                poses=None,
                take=self._take_names[take],
                start_frame=i - int(self._take_first_frame[take]),
                frame_ids=(i,),
            )
        if i in self._bad_clips:
            raise ValueError(self._bad_clips[i])
        row = self._read("clips", self._clips, i)  # [2 + T] int64: take, start, f_0 .. f_{T-1}
        num_steps = int(self._manifest["num_steps"])
        num_poses = num_steps * int(self._manifest["poses_per_step"])
        poses = self._read("poses", self._poses, i).reshape(num_poses, -1, 4)  # [20, 17, 4]
        frame_ids = tuple(int(f) for f in row[2 : 2 + num_steps])
        camera = self._read("camera", self._camera, i).reshape(num_poses, 3, 4)  # [20, 3, 4]
        return RawClip(
            frames=[self._frame(f) for f in frame_ids],
            poses=poses,
            take=self._take_names[int(row[0])],
            start_frame=int(row[1]),
            frame_ids=frame_ids,
            camera=camera,
        )

    def __repr__(self) -> str:
        return f"ClipDataset({self.path!r}, source={self.source}, samples={len(self)})"
