"""Per-record crc32s of a preprocessed dataset: `<name>.crc` beside each `<name>.bin/.idx`.

Megatron's `.bin`/`.idx` format stays as it is; preprocessing writes a side file per indexed
file holding one little-endian uint32 per record, the crc32 of that record's bytes, and
records in manifest.json (`checksums`) the algorithm, the record count and the crc32 of each
side file. A reader checks the side file against the manifest when it opens the dataset and a
record against its crc32 every time it reads it (a few microseconds against a JPEG decode's
milliseconds: docs/benchmarks.md, "Dataset checksums"), so a flipped bit in a pose, a frame id
or a JPEG is named as a bad record instead of being trained on.

    manifest["checksums"] = write_record_checksums(out_dir, ["frames", "poses", ...])  # preprocess
    sums = RecordChecksums.open(path, "poses", len(poses), manifest)  # None: none written
    sums.check(i, np.asarray(poses[i]))   # ValueError naming the file and record
"""

from __future__ import annotations

import os
import zlib

import numpy as np

from megatron_ego.data.indexed import IndexedDataError, open_indexed

__all__ = ["CHECKSUMS", "RecordChecksums", "record_crc32s", "write_record_checksums"]

CHECKSUMS = "checksums"
"""The manifest key: {"algorithm": "crc32", "files": {name: {"records": n, "crc32": c}}}."""
_DTYPE = np.dtype("<u4")


def record_crc32s(path_prefix: str, dtype) -> np.ndarray:
    """uint32 [records]: the crc32 of every record of `<path_prefix>.bin`, read in order."""
    dataset = open_indexed(path_prefix, dtype)
    index = dataset.index
    pointers = np.asarray(index.sequence_pointers, dtype=np.int64)  # [n] bytes
    sizes = np.asarray(index.sequence_lengths, dtype=np.int64) * int(index.dtype_size)  # [n]
    out = np.empty(len(pointers), dtype=_DTYPE)
    data = np.memmap(f"{path_prefix}.bin", dtype=np.uint8, mode="r")
    for i, (start, size) in enumerate(zip(pointers.tolist(), sizes.tolist())):
        out[i] = zlib.crc32(data[start:start + size])
    del data, dataset
    return out


def write_record_checksums(directory: str, names: dict[str, type]) -> dict:
    """Write `<name>.crc` for each indexed file of `directory` ({name: dtype}); returns the
    manifest's `checksums` entry."""
    files = {}
    for name, dtype in names.items():
        crcs = record_crc32s(os.path.join(directory, name), dtype)
        path = os.path.join(directory, f"{name}.crc")
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(crcs.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        files[name] = {"records": int(len(crcs)), "crc32": zlib.crc32(crcs.tobytes())}
    return {"algorithm": "crc32", "per": "record", "files": files}


class RecordChecksums:
    """The crc32 of every record of one indexed file, memory-mapped (picklable by path)."""

    def __init__(self, bin_path: str, crc_path: str, records: int):
        self.bin_path, self.crc_path, self.records = bin_path, crc_path, records
        self._sums: np.ndarray | None = None

    @classmethod
    def open(cls, directory: str, name: str, records: int, manifest: dict
             ) -> RecordChecksums | None:
        """The checks of `<directory>/<name>`, or None when the manifest lists none (a dataset
        preprocessed before checksums existed).

        Raises:
            IndexedDataError: the side file is missing, of the wrong length, or damaged.
        """
        entry = (manifest.get(CHECKSUMS) or {}).get("files", {}).get(name)
        if entry is None:
            return None
        crc_path = os.path.join(directory, f"{name}.crc")
        hint = (f"re-run preprocessing (python -m preprocess.egoexo4d / preprocess.walking_tours "
                f"--out {directory}) to rebuild it")
        try:
            raw = open(crc_path, "rb").read()  # noqa: SIM115  (a few MB, read once)
        except OSError as err:
            raise IndexedDataError(f"{crc_path} cannot be read ({err.strerror}): {hint}") from err
        if len(raw) != 4 * records or entry.get("records") != records:
            raise IndexedDataError(
                f"{crc_path} holds {len(raw) // 4} record checksums, the dataset {records} "
                f"(manifest: {entry.get('records')}): {hint}")
        if zlib.crc32(raw) != entry.get("crc32"):
            raise IndexedDataError(f"{crc_path} does not match its crc32 in manifest.json "
                                   f"(damaged): {hint}")
        return cls(os.path.join(directory, f"{name}.bin"), crc_path, records)

    def check(self, i: int, record: np.ndarray) -> None:
        """Raise ValueError, naming the file and record, unless `record` (its bytes as read) has
        its stored crc32."""
        if self._sums is None:  # mapped lazily: once per DataLoader worker
            self._sums = np.memmap(self.crc_path, dtype=_DTYPE, mode="r")
        if zlib.crc32(np.ascontiguousarray(record)) != int(self._sums[i]):
            raise ValueError(f"{self.bin_path} record {i} does not match its crc32 (the data "
                             "changed after preprocessing: a damaged disk or copy)")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sums": None}
