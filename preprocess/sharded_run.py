"""The run loop shared by the Ego-Exo4D and WalkingTours preprocessors.

Takes (or videos) are cut into fixed shards of `units_per_shard`, in a fixed order; rank r of
N handles shards r, r+N, ...; each shard is written, then marked finished (see `shards`). After
a barrier rank 0 merges the shards in order into one dataset per file name, writes a crc32 per
record of each (`<name>.crc`, data/checksums.py), stats.json, then manifest.json last (its
presence means the directory is complete). The shards do not
depend on the number of ranks, so a run on N ranks gives the same bytes as one on 1 rank, and a
re-run with the same options skips the shards already finished.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

from megatron_ego.data.checksums import CHECKSUMS, write_record_checksums
from megatron_ego.progress import progress
from preprocess.parallel import Ranks, world
from preprocess.shards import DTYPES, ShardWriter, file_names, merge_shards, write_json_atomic
from preprocess.stats import Stats
from preprocess.units import Unit  # noqa: F401  (re-exported: the preprocessors' unit)

__all__ = ["FORMAT_VERSION", "Unit", "run_sharded"]

FORMAT_VERSION = 2  # 2: Ego-Exo4D datasets hold `camera` (camera motion per clip)
SHARD_DIR = ".shards"
TAKE_FIELDS = ("name", "uid", "first_frame", "num_frames", "num_clips", "aria_camera")
log = logging.getLogger("preprocess")


# process(unit, writer, stats) -> {"name", "uid", "num_frames", "num_clips"[, "aria_camera"]},
# or None if skipped
ProcessFn = Callable[[Unit, ShardWriter, Stats], "dict[str, Any] | None"]


def _setup_logging(ranks: Ranks) -> None:
    logging.getLogger("megatron").setLevel(logging.WARNING)  # its per-file index chatter
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr,
            format=f"[rank {ranks.rank}/{ranks.size}] %(levelname)s %(message)s",
        )


def _finished(prefix: str, fingerprint: dict[str, Any], names: list[str]) -> dict | None:
    """The shard's meta if it was finished with the same options and inputs, else None."""
    try:
        with open(prefix + ".json") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    files = [f"{prefix}.{name}{ext}" for name in names for ext in (".bin", ".idx")]
    if meta.get("fingerprint") != fingerprint or not all(os.path.exists(p) for p in files):
        return None
    return meta


def _write_shards(shards: list[list[Unit]], shard_dir: str, process: ProcessFn,
                  options: dict, with_clips: bool, ranks: Ranks, desc: str) -> None:
    names = file_names(with_clips)
    mine = list(range(ranks.rank, len(shards), ranks.size))
    # One report per job: rank 0's own shards (the ranks take shards in turn, so it is typical).
    label = desc if ranks.size == 1 else f"{desc} (rank 0 of {ranks.size})"
    bar = progress(total=sum(len(shards[k]) for k in mine), desc=label, unit="take",
                   enabled=ranks.rank == 0)
    for k in mine:
        prefix = os.path.join(shard_dir, f"shard_{k:05d}")
        fingerprint = {"options": options, "units": [u.uid for u in shards[k]]}
        if _finished(prefix, fingerprint, names) is not None:
            log.info("shard %d already finished, skipped", k)
            bar.update(len(shards[k]))
            continue
        writer, stats, takes = ShardWriter(prefix, with_clips), Stats(), []
        try:
            for unit in shards[k]:
                entry = process(unit, writer, stats)
                if entry is not None:
                    takes.append(entry)
                bar.update(1)
        except BaseException:
            writer.abort()
            raise
        writer.commit({"fingerprint": fingerprint, "takes": takes, "stats": stats.flat()})
        log.info("wrote shard %d: %d of %d takes kept", k, len(takes), len(shards[k]))
    bar.close()


def _merge(out_dir: str, shard_dir: str, num_shards: int, with_clips: bool,
           manifest: dict[str, Any], keep_shards: bool) -> dict[str, Any]:
    shards, stats = [], Stats()
    for k in range(num_shards):
        prefix = os.path.join(shard_dir, f"shard_{k:05d}")
        with open(prefix + ".json") as f:
            meta = json.load(f)
        shards.append((prefix, meta))
        stats.update(Stats.from_flat(meta["stats"]))
    gc.freeze()  # megatron's add_index runs gc.collect() per shard: skip the torch-sized heap
    try:
        takes = merge_shards(out_dir, shards, with_clips)
    finally:
        gc.unfreeze()
    manifest = {
        "format_version": FORMAT_VERSION, **manifest,
        "num_frames": sum(t["num_frames"] for t in takes),
        "num_clips": sum(t["num_clips"] for t in takes),
        "takes": [{k: t[k] for k in TAKE_FIELDS if k in t} for t in takes],
        # a crc32 per record of every file (data/checksums.py), read back from the merged files
        CHECKSUMS: write_record_checksums(out_dir, {n: DTYPES[n] for n in file_names(with_clips)}),
    }
    write_json_atomic(os.path.join(out_dir, "stats.json"), stats.to_dict())
    write_json_atomic(os.path.join(out_dir, "manifest.json"), manifest)
    if not keep_shards:
        shutil.rmtree(shard_dir)
    log.info("wrote %s: %d takes, %d frames, %d clips\n%s", out_dir, len(takes),
             manifest["num_frames"], manifest["num_clips"], stats.summary())
    return manifest


def run_sharded(
    out_dir: str, units: list[Unit], process: ProcessFn, *, with_clips: bool,
    units_per_shard: int, options: dict[str, Any], manifest: dict[str, Any],
    keep_shards: bool = False, overwrite: bool = False, desc: str = "preprocess",
) -> dict[str, Any] | None:
    """Process `units` over the MPI ranks (or in this one process) and merge the shards.

    Args:
        out_dir: the dataset directory to write.
        units: every take/video, in the order of the final dataset.
        process: writes one unit into the shard, or counts why it was skipped.
        with_clips: the dataset has poses and clips (Ego-Exo4D).
        units_per_shard: units per shard (the unit of work, of resumption and of merging).
        options: what decides the output bytes (a shard made with others is redone).
        manifest: source-specific manifest fields (source, split, encoding, frame size, ...).

    Returns:
        The manifest written (rank 0), None on other ranks or when the directory was complete.
    """
    ranks = world()
    _setup_logging(ranks)
    manifest_path = os.path.join(out_dir, "manifest.json")
    if os.path.exists(manifest_path) and not overwrite:
        if ranks.rank == 0:
            log.info("%s is already complete; pass --overwrite to rebuild it", out_dir)
        return None
    shard_dir = os.path.join(out_dir, SHARD_DIR)
    if ranks.rank == 0:
        os.makedirs(shard_dir, exist_ok=True)
        if os.path.exists(manifest_path):
            os.remove(manifest_path)
    ranks.barrier()
    shards = [units[i : i + units_per_shard] for i in range(0, len(units), units_per_shard)]
    try:
        _write_shards(shards, shard_dir, process, options, with_clips, ranks, desc)
        ranks.barrier()
        result = None
        if ranks.rank == 0:
            result = _merge(out_dir, shard_dir, len(shards), with_clips,
                            {**manifest, "preprocess": options}, keep_shards)
        ranks.barrier()
        return result
    except Exception:
        log.exception("rank %d failed; stopping every rank", ranks.rank)
        ranks.abort(1)
        raise
