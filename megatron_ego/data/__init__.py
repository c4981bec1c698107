"""Data: the preprocessed-dataset reader, multi-crop augmentation and training micro-batches.

    from megatron_ego.data import build_train_loader, load_frame, IMAGENET_MEAN, IMAGENET_STD
"""

from megatron_ego.data.clips import ClipDataset, RawClip
from megatron_ego.data.decode import IMAGENET_MEAN, IMAGENET_STD, load_frame
from megatron_ego.data.loader import build_train_loader

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClipDataset",
    "RawClip",
    "build_train_loader",
    "load_frame",
]
