"""Cost of a crc32 on every checkpoint file (issue 23 item 2), on a checkpoint of the 300M model's
sizes.

    .venv/bin/python bench/checkpoint_checksum.py [--params 300000000] [--world 8] \
        [--workdir /tmp/ckpt_bench]

1. Checksum throughput (MB per CPU second) of candidate algorithms on a 256 MiB buffer in
   memory (best of 3):
   zlib.crc32 (what the manifest uses), zlib.adler32, hashlib's blake2b, md5 and sha1.
2. A synthetic checkpoint laid out as the trainer writes one at `--params` parameters on
   `--world` data-parallel ranks: mp_rank_00_model_states.pt (bf16 module, 2 B/param), one ZeRO-2
   optimizer partition per rank (fp32 master weights + Adam's two moments, 12 B/param in all),
   trainer_state.pt (the fp32 EMA teacher, 4 B/param): 18 B/param, 5.4 GB at 300M. Each file is
   written twice, through `durable_torch_save` (fsync + rename + crc32 while writing) and the
   same without the checksum, in alternating order from file to file; then the COMPLETE
   manifest is written from those crc32s, and
   `verify` reads every file back with 1 thread and with several (page cache warm: the files
   were just written).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import torch

from megatron_ego.checkpoint_format.files import durable_torch_save
from megatron_ego.checkpoint_format.manifest import mark_complete, verify


def algorithms(mib: int = 256) -> dict[str, float]:
    """MB per CPU second of each checksum over a buffer of `mib` MiB, best of 3."""
    data = os.urandom(mib << 20)
    candidates = {
        "zlib.crc32": lambda b: zlib.crc32(b),
        "zlib.adler32": lambda b: zlib.adler32(b),
        "blake2b": lambda b: hashlib.blake2b(b).digest(),
        "md5": lambda b: hashlib.md5(b).digest(),
        "sha1": lambda b: hashlib.sha1(b).digest(),
    }
    rates = {}
    for name, fn in candidates.items():
        best = min(_both(fn, data)[1] for _ in range(3))  # CPU seconds: steady under load
        rates[name] = round(len(data) / best / 1e6)
    return rates


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _both(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn(*args): on a shared machine the CPU
    time is the steadier measure of the work a checksum adds."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def _plain_save(obj, path: Path) -> None:
    """durable_torch_save without the checksum: the baseline."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def checkpoint_files(params: int, world: int):
    """(file name, state) of each file, built one at a time (the peak is the teacher's 4 B/param)."""
    yield "mp_rank_00_model_states.pt", {"module": {"w": torch.ones(params, dtype=torch.bfloat16)}}
    part = -(-params // world)
    for rank in range(world):
        state = {"optimizer_state_dict": {
            "single_partition_of_fp32_groups": [torch.ones(part)],
            "base_optimizer_state": {"state": {0: {"exp_avg": torch.ones(part),
                                                   "exp_avg_sq": torch.ones(part)}}}}}
        yield f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", state
    yield "trainer_state.pt", {"teacher": {"w": torch.ones(params)}}


def checkpoint(params: int, world: int, workdir: Path) -> dict[str, float]:
    folder = workdir / "step_0000100"
    folder.mkdir(parents=True)
    plain, checked_t = [0.0, 0.0], [0.0, 0.0]  # (wall, cpu) seconds
    checksums = {}
    for k, (name, state) in enumerate(checkpoint_files(params, world)):
        def checked(state=state, name=name):
            checksums[name] = durable_torch_save(state, folder / name)

        for run in ((_plain_save, checked), (checked, _plain_save))[k % 2]:  # alternate order
            wall, cpu = _both(checked) if run is checked else _both(_plain_save, state,
                                                                     folder / name)
            total = checked_t if run is checked else plain
            total[0] += wall
            total[1] += cpu
        del state
    size = sum(p.stat().st_size for p in folder.iterdir())
    manifest_s = _timed(mark_complete, folder, {"step": 100}, checksums)
    threads = min(8, os.cpu_count() or 1)
    verify_1 = min(_timed(verify, folder, 1) for _ in range(2))
    verify_n = min(_timed(verify, folder, threads) for _ in range(2))
    assert verify(folder) is None
    verify_cpu = _both(verify, folder, 1)[1]
    return {"bytes": size, "files": len(checksums),
            "write_wall_s_without_crc": round(plain[0], 2),
            "write_wall_s_with_crc": round(checked_t[0], 2),
            "write_cpu_s_without_crc": round(plain[1], 2),
            "write_cpu_s_with_crc": round(checked_t[1], 2),
            "manifest_s": round(manifest_s, 3), "verify_s_1_thread": round(verify_1, 2),
            "verify_cpu_s_1_thread": round(verify_cpu, 2),
            "verify_threads": threads, "verify_s_threads": round(verify_n, 2),
            "verify_GB_per_s": round(size / verify_n / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=300_000_000)
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a new temp dir)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ckpt_bench_"))
    try:
        result = {"algorithms_MB_per_s": algorithms(),
                  "checkpoint": checkpoint(args.params, args.world, workdir / "run"),
                  "params": args.params, "world": args.world, "cpus": os.cpu_count()}
    finally:
        shutil.rmtree(workdir / "run", ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
