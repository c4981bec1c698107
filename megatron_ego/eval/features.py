"""Evaluation inputs: image sets as the model sees them, and batched feature extraction.

- ``ImageFolderImages``: k-NN images with DINO's evaluation transform (resize the short side to
  S x 256/224, bicubic, then centre-crop S x S; ImageNet normalisation).
- ``StoredFrames``: the stored 6 fps frames of a preprocessed dataset, whole frame resized to S
  (the training pipeline's ``load_frame``).
- ``ValClips``: preprocessed clips as (T frames, 20 poses), for retrieval and motion;
  ``PairedClips`` adds another clip's frames and poses (the controls' partner).

Datasets return CPU tensors and are picklable (DataLoader workers reopen the memory maps).

    loader = make_loader(StoredFrames(path, ids, 224), batch_size=64, workers=4)
    feats = extract(loader, lambda x: agent.represent(x, with_logits=True))
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from megatron_ego.data.clips import ClipDataset
from megatron_ego.data.decode import IMAGENET_MEAN, IMAGENET_STD, load_frame
from megatron_ego.data.indexed import open_indexed
from megatron_ego.pose_format import pose_problem

log = logging.getLogger(__name__)

KNN_RESIZE_RATIO = 256 / 224  # DINO eval: Resize(256) + CenterCrop(224)


def knn_image(path: str, size: int) -> torch.Tensor:
    """One image file -> float32 [3, size, size]: short side to size*256/224, centre crop, normalise."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        short = int(round(size * KNN_RESIZE_RATIO))
        scale = short / min(w, h)
        rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((rw, rh), Image.BICUBIC)
        left, top = (rw - size) // 2, (rh - size) // 2
        array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)
    x = torch.from_numpy(array).permute(2, 0, 1) / 255.0  # [3, S, S] in [0, 1]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


UNREADABLE = -1
"""Label that `ImageFolderImages` gives a file it cannot decode (its image is all zeros)."""
IMAGE_ERRORS = (OSError, ValueError, SyntaxError)
"""What PIL raises for a truncated image, a file that is no image (UnidentifiedImageError is an
OSError), or a damaged header (SyntaxError, ValueError)."""


class ImageFolderImages(Dataset):
    """(image [3, S, S], label) for a list of image files.

    A file that cannot be decoded (truncated, not an image) yields zeros and the label
    UNREADABLE, so that a long extraction goes on; `unreadable_images` names them afterwards.
    """

    def __init__(self, paths: list[str], labels: list[int], size: int):
        self.paths, self.labels, self.size = list(paths), list(labels), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return knn_image(self.paths[i], self.size), self.labels[i]
        except IMAGE_ERRORS:
            return torch.zeros(3, self.size, self.size), UNREADABLE


def unreadable_images(paths: list[str], size: int) -> list[str]:
    """'path: why' for each of `paths` that `knn_image` cannot decode (re-tried here, in this
    process, for the message; only the few files labelled UNREADABLE are passed)."""
    reasons = []
    for path in paths:
        try:
            knn_image(path, size)
        except IMAGE_ERRORS as err:
            reasons.append(f"{path}: {err}")
    return reasons


class StoredFrames(Dataset):
    """(frame [3, S, S], frame index) for chosen stored frames of a preprocessed dataset."""

    def __init__(self, path: str, frame_ids: np.ndarray, size: int, encoding: str,
                 frame_size: tuple[int, int]):
        self.path, self.ids, self.size, self.encoding = path, np.asarray(frame_ids), size, encoding
        self.frame_size = frame_size  # (H, W) of the stored frames (raw encoding)
        self._frames = None

    def __len__(self) -> int:
        return len(self.ids)

    def raw(self, frame_id: int) -> np.ndarray:
        """The stored frame: 1-D JPEG bytes, or [H, W, 3] uint8 pixels (raw encoding)."""
        if self._frames is None:  # opened lazily, once per worker
            self._frames = open_indexed(os.path.join(self.path, "frames"), np.uint8)
        data = np.array(self._frames[int(frame_id)])
        return data.reshape(*self.frame_size, 3) if self.encoding == "raw" else data

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        frame_id = int(self.ids[i])
        return load_frame(self.raw(frame_id), self.encoding, self.size), frame_id

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_frames": None}


class ValClips(Dataset):
    """(frames [T, 3, S, S], poses [T*P, J, 4], clip index) for chosen clips of a dataset."""

    def __init__(self, path: str, clip_ids: np.ndarray, size: int):
        self.dataset = ClipDataset(path)
        self.ids, self.size = np.asarray(clip_ids), size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        clip_id = int(self.ids[i])
        clip = self.dataset[clip_id]
        frames = torch.stack([load_frame(f, self.dataset.encoding, self.size)
                              for f in clip.frames])  # [T, 3, S, S]
        return frames, torch.from_numpy(np.array(clip.poses, dtype=np.float32)), clip_id


class PairedClips(ValClips):
    """ValClips with a partner per clip, for the controls (eval/controls.py): (frames, poses,
    partner frames [T, 3, S, S] (or an empty [0] tensor), partner poses [T*P, J, 4], clip index)."""

    def __init__(self, path: str, clip_ids: np.ndarray, size: int, partner_ids: np.ndarray,
                 partner_frames: bool):
        super().__init__(path, clip_ids, size)
        self.partners, self.partner_frames = np.asarray(partner_ids), partner_frames
        if self.partners.shape != self.ids.shape:
            raise ValueError(f"partner_ids {self.partners.shape} must match clip_ids {self.ids.shape}")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                           int]:
        frames, poses, clip_id = super().__getitem__(i)
        partner = self.dataset[int(self.partners[i])]
        partner_frames = torch.stack([load_frame(f, self.dataset.encoding, self.size)
                                      for f in partner.frames]) if self.partner_frames \
            else torch.zeros(0)  # [T, 3, S, S] or [0]
        partner_poses = torch.from_numpy(np.array(partner.poses, dtype=np.float32))  # [T*P, J, 4]
        return frames, poses, partner_frames, partner_poses, clip_id


def clip_table(path: str) -> np.ndarray:
    """int64 [clips, 2 + T]: take index, start frame (30 fps), stored frame index of each step."""
    clips = open_indexed(os.path.join(path, "clips"), np.int64)
    return np.stack([np.array(clips[i]) for i in range(len(clips))]) if len(clips) else \
        np.zeros((0, 2), dtype=np.int64)


def camera_table(path: str, num_frames: int) -> np.ndarray:
    """float32 [clips, num_frames, 3, 4]: each clip's camera motion (docs/data_format.md)."""
    camera = open_indexed(os.path.join(path, "camera"), np.float32)
    return np.stack([np.array(camera[i]).reshape(num_frames, 3, 4) for i in range(len(camera))]) \
        if len(camera) else np.zeros((0, num_frames, 3, 4), dtype=np.float32)


def make_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    """In-order batches; ``workers`` decoding processes (0: in this process)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def extract(loader: DataLoader, fn: Callable[[torch.Tensor], torch.Tensor | tuple]
            ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run ``fn`` on every batch's first item; concatenate its outputs (on CPU) and the ids.

    Returns:
        (outputs: one [n, ...] tensor per output of ``fn``, ids [n] int64 (labels or indices)).
    """
    outputs: list[list[torch.Tensor]] = []
    ids = []
    for batch in loader:
        result = fn(batch[0])
        result = result if isinstance(result, tuple) else (result,)
        if not outputs:
            outputs = [[] for _ in result]
        for store, value in zip(outputs, result):
            store.append(value.detach().cpu())
        ids.append(torch.as_tensor(batch[-1], dtype=torch.int64))
    if not ids:
        return [], torch.zeros(0, dtype=torch.int64)
    return [torch.cat(o) for o in outputs], torch.cat(ids)


def fingerprint(model_dir: str | Path, items: list[str], size: int) -> str:
    """Identity of a feature cache: the exported weights file, the inputs and the image size."""
    weights = Path(model_dir) / "model.safetensors"
    stat = weights.stat()
    digest = hashlib.sha256()
    digest.update(f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{size}".encode())
    for item in items:
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()


def load_cached(path: Path, key: str, tensors: tuple[str, ...] = ()
                ) -> dict[str, torch.Tensor] | None:
    """Cached tensors written by ``save_cached`` with the same key (and a tensor under each of
    ``tensors``), else None. A damaged cache (cut short, not a torch file, holding anything but
    tensors and numbers, or missing a tensor) is never unpickled into code: it is reported in
    one warning and None is returned, so the caller rebuilds it."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(cached, dict):
            raise ValueError(f"a {type(cached).__name__}, not a dict of tensors")
        missing = [k for k in tensors if not torch.is_tensor(cached.get(k))]
        if missing:
            raise ValueError(f"no tensor {missing[0]!r}")
    except pickle.UnpicklingError:
        log.warning("feature cache %s holds objects other than tensors and numbers (refused, "
                    "never unpickled): rebuilding it", path)
        return None
    except Exception as err:  # noqa: BLE001  (any damage: the cache is rebuilt)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        log.warning("feature cache %s is damaged (%s: %s): rebuilding it", path,
                    type(err).__name__, first)
        return None
    return cached if cached.get("fingerprint") == key else None


def save_cached(path: Path, key: str, tensors: dict[str, torch.Tensor]) -> None:
    """torch.save tensors plus their fingerprint, atomically (tmp + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**tensors, "fingerprint": key}, tmp)
    os.replace(tmp, path)


def open_val_clips(path: str | Path, agent) -> ClipDataset:
    """The preprocessed Ego-Exo4D clips at ``path``, checked against the model's config.

    Raises:
        FileNotFoundError: the folder or its manifest is missing.
        ValueError: no clips, no poses, a clip shape other than the model's, or frames stored
            smaller than model.image_size.
    """
    path = str(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"--data {path} does not exist: preprocess the val split first (`python -m "
            f"preprocess.egoexo4d --root RAW --split val --out {path}`)"
        )
    dataset = ClipDataset(path)
    m = agent.cfg.model
    if dataset.source != "egoexo4d":
        raise ValueError(f"--data {path} holds {dataset.source} frames without poses: pass a "
                         "preprocessed Ego-Exo4D split (clips with poses)")
    manifest = dataset.manifest
    found = (int(manifest["num_steps"]), int(manifest["poses_per_step"]))
    if found != (m.num_steps, m.poses_per_step):
        raise ValueError(
            f"--data {path} has clips of {found[0]} steps x {found[1]} poses but the model takes "
            f"{m.num_steps} x {m.poses_per_step}: preprocess with --num-steps {m.num_steps}"
        )
    height, width = dataset.frame_size
    if min(height, width) < m.image_size:
        raise ValueError(
            f"--data {path} stores {height}x{width} frames, smaller than the model's "
            f"image_size={m.image_size}: re-run preprocessing with --size {m.image_size} or more"
        )
    if len(dataset) == 0:
        raise ValueError(f"--data {path} holds no clips: check its stats.json for what was skipped")
    return dataset


def usable_clips(dataset: ClipDataset, clip_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(the clips of ``clip_ids`` that can be scored, one 'why' per clip left out, naming its
    file and record): a clip is left out when its stored poses hold a NaN or an inf, a
    visibility outside [0, 1] or a visible joint beyond pose_format.MAX_ABS_METRES, when a
    record fails its crc32, or when its frames leave its take (found at open). A NaN in a
    visible joint would otherwise make every MPJPE NaN (reported as null) or stop
    ``agent.act`` / ``agent.predict``."""
    kept, skipped = [], []
    for clip in np.asarray(clip_ids).tolist():
        try:
            why = dataset.bad_clip(clip) or pose_problem(dataset.poses(clip))
        except ValueError as err:  # a record that does not match its crc32
            why = str(err)
        if why is None:
            kept.append(clip)
        else:
            skipped.append(why if why.startswith(dataset.path)
                           else f"{dataset.path}/poses.bin record {clip}: {why}")
    return np.asarray(kept, dtype=np.int64), skipped


def select_clips(num_clips: int, max_clips: int | None) -> np.ndarray:
    """All clip indices, or ``max_clips`` of them evenly spread over the split (every take)."""
    if max_clips is None or max_clips >= num_clips:
        return np.arange(num_clips)
    if max_clips < 1:
        raise ValueError(f"--max-clips must be >= 1; got {max_clips}")
    return np.unique(np.linspace(0, num_clips - 1, max_clips).round().astype(np.int64))
