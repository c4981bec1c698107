"""Open one Megatron indexed dataset (`<prefix>.bin` + `<prefix>.idx`) and check it is whole.

The files are written by `megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder` (see
`preprocess/`) and read here with megatron's own `IndexedDataset`, memory-mapped. Megatron trusts
the `.idx` blindly: a `.bin` cut short by a crashed or interrupted copy would surface much later
as a numpy error deep inside a DataLoader worker. `open_indexed` checks up front that the `.bin`
holds exactly the bytes the `.idx` promises and says what to do when it does not.

    frames = open_indexed("data/egoexo4d/train/frames", np.uint8)
    jpeg = frames[0]  # 1-D uint8 view into the memory map
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["IndexedDataError", "open_indexed"]


class IndexedDataError(RuntimeError):
    """A preprocessed `.bin`/`.idx` pair is missing, of the wrong dtype, or damaged."""


def _rerun_hint(path_prefix: str) -> str:
    directory = os.path.dirname(os.path.abspath(path_prefix))
    return (
        f"re-run preprocessing (python -m preprocess.egoexo4d / preprocess.walking_tours "
        f"--out {directory}) to rebuild it"
    )


def open_indexed(path_prefix: str, dtype: type[np.number] | np.dtype):
    """Open `<path_prefix>.bin/.idx` with megatron's `IndexedDataset` after checking its integrity.

    Args:
        path_prefix: path without the `.bin`/`.idx` suffix, e.g. `data/egoexo4d/train/frames`.
        dtype: the element type the caller expects (uint8 frames, float32 poses, int64 clips).

    Returns:
        `megatron.core.datasets.indexed_dataset.IndexedDataset`, memory-mapped and picklable
        (pickling re-opens the files by path in the receiving process).

    Raises:
        IndexedDataError: a file is missing, the stored dtype differs from `dtype`, the `.idx` is
            unreadable, or the `.bin` size differs from the last pointer + size in the `.idx`.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset, get_bin_path, get_idx_path

    idx_path, bin_path = get_idx_path(path_prefix), get_bin_path(path_prefix)
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise IndexedDataError(f"{path} does not exist: {_rerun_hint(path_prefix)}")
    bin_size = os.path.getsize(bin_path)
    if bin_size == 0:
        raise IndexedDataError(
            f"{bin_path} is empty (the dataset holds no records, or writing it was interrupted): "
            f"{_rerun_hint(path_prefix)}"
        )
    try:
        dataset = IndexedDataset(path_prefix, mmap=True)
    except (AssertionError, ValueError, OSError) as err:
        raise IndexedDataError(
            f"{idx_path} could not be read ({err}), the index is damaged: "
            f"{_rerun_hint(path_prefix)}"
        ) from err

    index = dataset.index
    if np.dtype(index.dtype) != np.dtype(dtype):
        raise IndexedDataError(
            f"{bin_path} stores {np.dtype(index.dtype)} but {np.dtype(dtype)} was expected: "
            f"the file belongs to another dataset, or {_rerun_hint(path_prefix)}"
        )
    expected = 0
    if len(index) > 0:
        expected = int(index.sequence_pointers[-1]) + int(index.sequence_lengths[-1]) * int(
            index.dtype_size
        )
    if bin_size != expected:
        raise IndexedDataError(
            f"{bin_path} holds {bin_size} bytes but {idx_path} promises {expected} "
            f"({len(index)} records): the file is truncated or was overwritten; "
            f"{_rerun_hint(path_prefix)}"
        )
    return dataset
