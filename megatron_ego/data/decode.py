"""Stored frames -> uint8 image tensors -> normalised float frames.

A stored frame (docs/data_format.md) is a 1-D uint8 JPEG buffer or an [H, W, 3] uint8 array.
JPEG frames are decoded with libjpeg-turbo at the smallest DCT scale (1, 1/2, 1/4, 1/8: PIL's
draft mode) that still gives at least the resolution the caller asks for, so a frame stored
larger than it is used costs a fraction of a full decode; at full scale torchvision's decoder is
used while torchvision has one (PIL otherwise).

    image = decode_rgb(frame, "jpeg", min_size=(224, 224))   # uint8 [3, h, w]
    x = load_frame(frame, "jpeg", 224)                       # float32 [3, 224, 224], normalised
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "decode_rgb",
    "load_frame",
    "normalize",
    "resize_frames",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet (pixel values in [0, 1])."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet (pixel values in [0, 1])."""

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def decode_rgb(
    frame: np.ndarray,
    encoding: str,
    min_size: tuple[int, int] | None = None,
    full_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Decode one stored frame to RGB.

    Args:
        frame: 1-D uint8 JPEG buffer (`encoding="jpeg"`) or [H, W, 3] uint8 (`"raw"`).
        encoding: the dataset's manifest `encoding`.
        min_size: (h, w) in pixels the caller needs at least; a JPEG stored at (H, W) with
            H >= 2 h and W >= 2 w is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
            through PIL's draft mode). None = full size.
        full_size: (H, W) of the stored frame (the manifest's); None = read from the JPEG
            header. A frame that cannot be decoded at a reduced scale goes to torchvision's
            decoder (~2x faster than PIL at full scale) where torchvision still has one; the
            choice depends only on the sizes, so every caller gets the same pixels.

    Returns:
        uint8 [3, h, w] RGB; (h, w) = (H, W) unless decoded at a reduced scale.
    """
    if encoding == "raw":
        return torch.from_numpy(np.array(frame)).permute(2, 0, 1)  # [3, H, W]
    if encoding != "jpeg":
        raise ValueError(f"unknown frame encoding {encoding!r}: expected 'jpeg' or 'raw'")
    if min_size is not None and full_size is None:
        full_size = _jpeg_size(frame)
    full_scale = min_size is None or full_size[0] < 2 * min_size[0] or full_size[1] < 2 * min_size[1]
    if full_scale and _decode_jpeg is not None:
        data = torch.from_numpy(np.array(frame))  # [bytes] uint8, a writable copy of the view
        return _decode_jpeg(data, mode=_RGB)  # [3, H, W]
    from PIL import Image

    with Image.open(io.BytesIO(frame.tobytes())) as image:
        if min_size is not None:  # PIL picks the smallest DCT scale with size >= min_size
            image.draft("RGB", (min_size[1], min_size[0]))  # PIL sizes are (w, h)
        array = np.array(image if image.mode == "RGB" else image.convert("RGB"))  # [h, w, 3]
    return torch.from_numpy(array).permute(2, 0, 1)  # [3, h, w]


def _jpeg_size(frame: np.ndarray) -> tuple[int, int]:
    """(H, W) from a JPEG header (nothing decoded)."""
    from PIL import Image

    with Image.open(io.BytesIO(frame.tobytes())) as image:
        return image.height, image.width


def _torchvision_decoder():
    """torchvision.io.decode_jpeg (deprecated since torchvision 0.29) where it still exists."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None, None
    return decode_jpeg, ImageReadMode.RGB


_decode_jpeg, _RGB = _torchvision_decoder()


def resize_frames(images: torch.Tensor, size: int) -> torch.Tensor:
    """Whole frames resized (squashed, no crop) to size x size, bilinear with antialiasing.

    Args:
        images: uint8 [3, H, W] or [n, 3, H, W].

    Returns:
        uint8 [n, 3, size, size] (n = 1 for a single image).
    """
    batch = images if images.dim() == 4 else images.unsqueeze(0)  # [n, 3, H, W]
    if batch.shape[-2:] == (size, size):
        return batch
    return F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)


def normalize(images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """ImageNet normalisation: (x / 255 - mean) / std for uint8 input, (x - mean) / std for float.

    Args:
        images: uint8 [..., 3, H, W] (0..255) or float32 [..., 3, H, W] (0..1).
        out: float32 tensor of the same shape to write into (may be `images` itself, float
            input normalised in place); None = a new tensor.

    Returns:
        float32 [..., 3, H, W].
    """
    scale = 1.0 / _STD  # [3, 1, 1]
    if images.dtype == torch.uint8:
        scale = scale / 255.0
    if out is None:
        out = images.to(torch.float32)
    elif out is not images:
        out.copy_(images)
    return out.mul_(scale).sub_(_MEAN / _STD)


def load_frame(frame: np.ndarray, encoding: str, size: int) -> torch.Tensor:
    """One stored frame as the model sees it: whole frame resized to size x size, normalised.

    Args:
        frame: a `RawClip.frames` entry: 1-D uint8 JPEG buffer or [H, W, 3] uint8.
        encoding: the dataset's `encoding` ("jpeg" or "raw").
        size: output side in pixels (cfg.model.image_size).

    Returns:
        float32 [3, size, size], ImageNet-normalised.
    """
    image = decode_rgb(frame, encoding, min_size=(size, size))  # [3, h, w]
    return normalize(resize_frames(image, size))[0]  # [3, size, size]
