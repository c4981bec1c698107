"""The checkpoint format's manifest (issue 23 item 2): a crc32 for every file, whatever its size,
computed while writing and checked before use; a torn page anywhere is found."""

from __future__ import annotations

import json
import os
import zlib

import torch

from megatron_ego.checkpoint_format.files import durable_torch_save, safe_load
from megatron_ego.checkpoint_format.manifest import (
    COMPLETE,
    MANIFEST_FORMAT,
    file_crc32,
    mark_complete,
    verify,
)


def _tear(path, offset: int, size: int = 16 << 10) -> None:
    """A torn page: `size` bytes of garbage at `offset`, the file's size unchanged."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * size)


def test_the_crc_computed_while_writing_is_the_files(tmp_path):
    state = {"w": torch.randn(300, 7), "b": torch.arange(5, dtype=torch.bfloat16), "n": [1, "x"]}
    for zipfile in (True, False):
        crc = durable_torch_save(state, tmp_path / "s.pt", zipfile=zipfile)
        assert crc == zlib.crc32((tmp_path / "s.pt").read_bytes())
        assert torch.equal(safe_load(tmp_path / "s.pt")["w"], state["w"])


def test_every_file_gets_a_crc32_and_a_torn_page_in_a_300_mib_file_is_found(tmp_path):
    folder = tmp_path / "step_0000010"
    folder.mkdir()
    small = folder / "trainer_state.pt"
    crcs = {small.name: durable_torch_save({"teacher": torch.randn(1000)}, small)}
    big = folder / "mp_rank_00_model_states.pt"  # 300 MiB, sparse: fast to write and read
    with open(big, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(300 << 20)
    manifest = mark_complete(folder, {"step": 10}, crcs)  # the big one's crc is read back
    assert manifest["format"] == MANIFEST_FORMAT == 3
    assert big.stat().st_size > 256 << 20  # beyond the old size-only limit
    assert {n: set(e) for n, e in manifest["files"].items()} == {
        big.name: {"size", "crc32"}, small.name: {"size", "crc32"}}
    assert manifest["files"][big.name]["crc32"] == file_crc32(big)
    assert verify(folder) is None
    _tear(big, big.stat().st_size // 2)
    assert verify(folder) == f"{big.name} does not match its crc32 in {COMPLETE} (corrupted)"


def test_a_format_3_manifest_without_a_crc_does_not_verify(tmp_path):
    folder = tmp_path / "step_0000001"
    folder.mkdir()
    (folder / "a.pt").write_bytes(b"x" * 10)
    mark_complete(folder, {"step": 1})
    manifest = json.loads((folder / COMPLETE).read_text())
    del manifest["files"]["a.pt"]["crc32"]
    (folder / COMPLETE).write_text(json.dumps(manifest))
    assert verify(folder) == f"{COMPLETE} has no crc32 for a.pt"
    manifest["format"] = 2  # older manifests checked large files by size only: still accepted
    (folder / COMPLETE).write_text(json.dumps(manifest))
    assert verify(folder) is None
