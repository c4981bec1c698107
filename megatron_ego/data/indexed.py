"""Open one Megatron indexed dataset (`<prefix>.bin` + `<prefix>.idx`) and check it is whole.

The files are written by `megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder` (see
`preprocess/`) and read here with megatron's own `IndexedDataset`, memory-mapped. Megatron trusts
the `.idx` blindly: a `.bin` cut short by a crashed or interrupted copy would surface much later
as a numpy error deep inside a DataLoader worker, and one flipped byte in an `.idx` would hand a
record another record's bytes. `open_indexed` checks up front, with a few vectorised numpy passes
over the `.idx` (docs/reliability.md has the cost at 1.4M records), that every record lies where
the one before it ends, that the `.bin` holds exactly the bytes the `.idx` promises, and that the
document indices are sane, and says what to do when not.

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
            unreadable, a record pointer, size or document index of the `.idx` is inconsistent,
            or the `.bin` size differs from where the last record ends.
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
    _check_records(index, bin_size, idx_path, bin_path, path_prefix)
    return dataset


def _check_records(index, bin_size: int, idx_path: str, bin_path: str, path_prefix: str) -> None:
    """Every record pointer and size of the `.idx` against the `.bin` (vectorised numpy).

    Records are stored back to back from byte 0, so with pointers p [n] (bytes), sizes s [n]
    (elements) and item size k: s >= 0, p[0] = 0, p[i] + s[i] k = p[i + 1], and the last record
    ends at the `.bin`'s size. Document indices d [m] (record numbers) start at 0, never
    decrease and stay <= n (megatron ends the last document at n; a builder not closing it is
    still valid). One flipped byte anywhere in the `.idx` breaks one of these.
    """
    n = len(index)
    pointers = np.asarray(index.sequence_pointers, dtype=np.int64)  # [n] bytes
    sizes = np.asarray(index.sequence_lengths, dtype=np.int64)  # [n] elements
    ends = pointers + sizes * int(index.dtype_size)  # [n] bytes
    problem = ""
    if len(pointers) != n or len(sizes) != n:
        problem = f"{len(pointers)} pointers and {len(sizes)} sizes for {n} records"
    elif n and (bad := np.flatnonzero(sizes < 0)).size:
        problem = f"record {int(bad[0])} has a negative size {int(sizes[bad[0]])}"
    elif n and int(pointers[0]) != 0:
        problem = f"record 0 starts at byte {int(pointers[0])}, not 0"
    elif n > 1 and (bad := np.flatnonzero(ends[:-1] != pointers[1:])).size:
        i = int(bad[0])
        problem = (f"record {i} ends at byte {int(ends[i])} but record {i + 1} starts at "
                   f"{int(pointers[i + 1])}")
    elif (int(ends[-1]) if n else 0) != bin_size:
        raise IndexedDataError(
            f"{bin_path} holds {bin_size} bytes but {idx_path} promises "
            f"{int(ends[-1]) if n else 0} ({n} records): the file is truncated or was "
            f"overwritten; {_rerun_hint(path_prefix)}"
        )
    else:
        docs = np.asarray(index.document_indices, dtype=np.int64)  # [m] record numbers
        if len(docs) == 0 or int(docs[0]) != 0 or int(docs[-1]) > n or (
                len(docs) > 1 and (np.diff(docs) < 0).any()):
            problem = (f"its {len(docs)} document indices do not run from 0 up to {n} in order "
                       f"(first {docs[:1].tolist()}, last {docs[-1:].tolist()})")
    if problem:
        raise IndexedDataError(
            f"{idx_path} is damaged: {problem}; {_rerun_hint(path_prefix)}"
        )
