"""Where an evaluation's numbers came from, recorded beside them in results.json / results.md:
the command line, the code (git commit), the model (export folder, its config and the checkpoint
step it was exported from) and the data (the val split's manifest, the k-NN folders).

    provenance = collect_provenance(agent, args_dict, sys.argv)
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def git_commit(repo: Path = REPO) -> str:
    """HEAD's hash, with "+dirty" when tracked files differ from it; "unknown" outside a checkout."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def data_manifest(data_dir: str | None) -> dict[str, Any] | None:
    """The identifying fields of a preprocessed dataset's manifest.json, and the file's sha256."""
    if not data_dir:
        return None
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        return {"path": str(data_dir), "manifest": "missing"}
    raw = path.read_bytes()
    manifest = json.loads(raw)
    keep = ("source", "split", "format_version", "encoding", "frame_size", "num_frames",
            "num_clips")
    return {"path": str(data_dir), "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "num_takes": len(manifest.get("takes", [])),
            **{k: manifest[k] for k in keep if k in manifest}}


def collect_provenance(model_dir: str, metadata: dict[str, str], config: dict[str, Any],
                       data_dir: str | None, knn_dirs: tuple[str | None, str | None],
                       argv: list[str]) -> dict[str, Any]:
    """Everything results.json records about how it was made (JSON-safe)."""
    return {
        "command": shlex.join(argv),
        "git_commit": git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {
            "export": str(model_dir),
            "checkpoint": metadata.get("checkpoint", "unknown"),
            "checkpoint_step": metadata.get("step", "unknown"),
            "weights": metadata.get("weights", "unknown"),
            "predict_act_weights": metadata.get("predict_act_weights", "unknown"),
            "config": config,
        },
        "data": data_manifest(data_dir),
        "knn": {"train": knn_dirs[0], "val": knn_dirs[1]} if any(knn_dirs) else None,
    }
