"""Represent benchmark: k-NN classification of ImageFolder images with the state features.

Each rank extracts the features of its block of the train and val images (``represent``: the
state query's output [n, h], DINO's evaluation transform) and caches them under
``out_dir/features/knn_{split}.rank{r}-of-{w}.pt`` (reused while the weights file, the image list
and the image size are unchanged; a damaged cache is rebuilt with a warning); ``knn_accuracy``
gathers the training bank and sums the counts.

An image that cannot be decoded (a truncated JPEG, a text file named .jpg) does not stop the job:
it is left out of the bank or the test set, logged with its path and counted
(``skipped_train`` / ``skipped_val`` in the results; docs/reliability.md).

    results = run_knn(agent, "imagenet100/train", "imagenet100/val", "runs/eval", ranks, model_dir)
    results["egoagent"]["top1"]
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_ego.eval.features import (
    UNREADABLE,
    ImageFolderImages,
    extract,
    fingerprint,
    load_cached,
    make_loader,
    save_cached,
    unreadable_images,
)
from megatron_ego.eval.knn import knn_accuracy, list_image_folder
from megatron_ego.runtime.processes import Processes, multi_rank

log = logging.getLogger(__name__)


def _split_features(agent, split: str, paths: list[str], labels: list[int], out_dir: Path,
                    ranks: Processes, model_dir: str, batch_size: int, workers: int
                    ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This rank's (features [n_r, h], labels [n_r], images skipped as unreadable), from the
    cache when it is current."""
    mine = ranks.shard(np.arange(len(paths)))
    my_paths = [paths[i] for i in mine]
    my_labels = [labels[i] for i in mine]
    key = fingerprint(model_dir, my_paths, agent.image_size)
    cache = out_dir / "features" / f"knn_{split}.rank{ranks.rank:05d}-of-{ranks.world_size:05d}.pt"
    cached = load_cached(cache, key, tensors=("features", "labels"))
    if cached is None:
        dataset = ImageFolderImages(my_paths, my_labels, agent.image_size)
        outputs, ids = extract(make_loader(dataset, batch_size, workers), agent.represent)
        features = outputs[0] if outputs else torch.zeros(0, agent.cfg.model.hidden_size)
        readable = ids != UNREADABLE  # [n_r] bool
        bad = [my_paths[i] for i in torch.nonzero(~readable).flatten().tolist()]
        for reason in unreadable_images(bad, agent.image_size):
            log.warning("k-NN %s: skipped an unreadable image, %s", split, reason)
        cached = {"features": features[readable], "labels": ids[readable],
                  "skipped": torch.tensor(len(bad))}
        save_cached(cache, key, cached)
    skipped = int(cached.get("skipped", torch.tensor(0)))
    return cached["features"].to(ranks.device), cached["labels"].to(ranks.device), skipped


def run_knn(agent, train_dir: str, val_dir: str, out_dir: str | Path, ranks: Processes,
            model_dir: str, batch_size: int = 64, workers: int = 4, k: int = 20,
            temperature: float = 0.07) -> dict[str, dict[str, float]]:
    """k-NN top-1/top-5 (percent) of the val images against the train images.

    Raises:
        FileNotFoundError: a folder is missing or not in ImageFolder layout.
        ValueError: train and val have different class folders.
    """
    train_paths, train_labels, classes = list_image_folder(train_dir)
    val_paths, val_labels, val_classes = list_image_folder(val_dir)
    if classes != val_classes:
        only = sorted(set(classes) ^ set(val_classes))
        raise ValueError(
            f"--knn-train {train_dir} and --knn-val {val_dir} have different class folders "
            f"(e.g. {only[0]!r}): both must hold the same classes"
        )
    out_dir = Path(out_dir)
    common = (out_dir, ranks, model_dir, batch_size, workers)
    train_feats, train_y, skip_train = _split_features(agent, "train", train_paths, train_labels,
                                                       *common)
    val_feats, val_y, skip_val = _split_features(agent, "val", val_paths, val_labels, *common)
    accuracy = knn_accuracy(train_feats, train_y, val_feats, val_y, num_classes=len(classes),
                            k=k, temperature=temperature)
    skipped = torch.tensor([skip_train, skip_val], dtype=torch.float64, device=ranks.device)
    if multi_rank():
        dist.all_reduce(skipped)
    skip_train, skip_val = (int(v) for v in skipped.tolist())
    if ranks.is_main and (skip_train or skip_val):
        log.warning("k-NN: %d train and %d val images could not be decoded and were left out "
                    "(named above)", skip_train, skip_val)
    return {"egoagent": {**accuracy, "num_train": len(train_paths) - skip_train,
                         "num_val": len(val_paths) - skip_val, "num_classes": len(classes),
                         "skipped_train": skip_train, "skipped_val": skip_val}}
