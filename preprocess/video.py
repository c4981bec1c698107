"""Stream frames out of MP4 files with PyAV (never the whole video in memory) and store them.

Decoding is sequential: Ego-Exo4D takes keep 1 frame in 5 of their 30 fps video, WalkingTours
videos 6 frames per second of their 60 fps 4K video. Resizing happens in libswscale (area
filter) while converting to RGB, unless a per-frame transform (fisheye undistortion) must see
the full-resolution frame first.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence

import av
import numpy as np
from PIL import Image

__all__ = [
    "VideoError", "decode_frames", "encode_frame", "frames_at_rate", "probe_size",
    "shorter_side_size",
]


class VideoError(RuntimeError):
    """A video could not be opened or decoded (missing, truncated or corrupt file)."""



def _video_stream(container, path: str):
    """The first video stream, decoded with PyAV's frame+slice threading; VideoError if none."""
    if not container.streams.video:
        raise VideoError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream

def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None,
            transform: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """One decoded frame as [h, w, 3] uint8 RGB at `size` = (h, w) (None: native size)."""
    if transform is None:
        if size is None:
            return frame.to_ndarray(format="rgb24")
        return frame.to_ndarray(width=size[1], height=size[0], format="rgb24",
                                interpolation="AREA")
    image = transform(frame.to_ndarray(format="rgb24"))  # [H, W, 3] full resolution
    if size is not None and image.shape[:2] != tuple(size):
        image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BOX))
    return image


def decode_frames(
    path: str,
    wanted: Sequence[int],
    size: tuple[int, int] | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[dict[int, np.ndarray], int]:
    """Decode `path` sequentially and keep the frames whose 0-based numbers are in `wanted`.

    Args:
        path: an MP4 (or any container PyAV reads) with one video stream.
        wanted: frame numbers to keep, in decode order (Ego-Exo4D's frame-aligned numbering).
        size: (height, width) of the kept frames in pixels; None keeps the native size.
        transform: applied to each kept full-resolution [H, W, 3] frame before resizing.

    Returns:
        ({frame number: [h, w, 3] uint8 RGB}, number of frames decoded). Decoding stops after
        the last wanted frame, so the count is exact only when the video ends before it.

    Raises:
        VideoError: the file cannot be opened, has no video stream, or fails to decode.
    """
    keep = set(int(k) for k in wanted)
    last = max(keep, default=-1)
    out: dict[int, np.ndarray] = {}
    count = 0
    try:
        with av.open(path) as container:
            stream = _video_stream(container, path)
            for count, frame in enumerate(container.decode(stream), start=1):
                number = count - 1
                if number in keep:
                    out[number] = _to_rgb(frame, size, transform)
                if number >= last:
                    break
    except (av.error.FFmpegError, OSError) as err:
        raise VideoError(f"{path}: {err}") from err
    return out, count


def probe_size(path: str) -> tuple[int, int]:
    """(height, width) of the first video stream, from the container header. Raises VideoError."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            return stream.height, stream.width
    except (av.error.FFmpegError, OSError) as err:
        raise VideoError(f"{path}: {err}") from err


def shorter_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) with the shorter side `side` pixels and the aspect kept (rounded to even)."""
    scale = side / min(height, width)
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def frames_at_rate(
    path: str, fps: float, side: int, on_size: Callable[[int, int], tuple[int, int]] | None = None
) -> Iterator[np.ndarray]:
    """Yield frames of a (long) video sampled at `fps` by their timestamps, as [h, w, 3] uint8.

    The shorter side is resized to `side` pixels; `on_size(height, width)` may override the
    output (h, w) once the first frame's native size is known. Raises VideoError.
    """
    step, next_time, size = 1.0 / fps, 0.0, None
    try:
        with av.open(path) as container:
            stream = _video_stream(container, path)
            rate = float(stream.average_rate or 30)
            for number, frame in enumerate(container.decode(stream)):
                time = frame.time if frame.time is not None else number / rate
                if time + 1e-6 < next_time:
                    continue
                while next_time <= time + 1e-6:
                    next_time += step
                if size is None:
                    size = shorter_side_size(frame.height, frame.width, side)
                    if on_size is not None:
                        size = on_size(*size)
                yield _to_rgb(frame, size, None)
    except (av.error.FFmpegError, OSError) as err:
        raise VideoError(f"{path}: {err}") from err


def encode_frame(image: np.ndarray, encoding: str, quality: int = 90) -> np.ndarray:
    """A frame [h, w, 3] uint8 RGB as stored: 1-D uint8 JPEG bytes, or the raw pixels flattened."""
    if encoding == "raw":
        return np.ascontiguousarray(image).reshape(-1)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)
