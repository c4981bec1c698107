"""Represent: DINO's weighted k-NN classifier on frozen features (paper Sec. 4.1, ImageNet-100/1K).

Each test feature votes with its ``k`` nearest training features by cosine similarity (features
are L2-normalised first); neighbour ``i`` adds ``exp(sim_i / T)`` to the score of its class. The
predicted class is the highest score. Defaults are DINO's ``k = 20`` and the official EgoAgent
temperature ``T = 0.07``.

Distributed use: when ``torch.distributed`` is initialised, each rank passes its own shard of the
training and test features; the training bank is all-gathered (shards may differ in size) so every
rank classifies its own test shard against the full bank, and ``knn_accuracy`` all-reduces the
counts. Without an initialised process group everything is local.

Usage::

    acc = knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes=100)
    acc["top1"], acc["top5"]   # percent
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_ego.runtime.processes import gather_rows, multi_rank

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def list_image_folder(root: str | Path) -> tuple[list[str], list[int], list[str]]:
    """List an ImageFolder tree ``root/<class>/**/<image>`` (torchvision conventions).

    Classes are the sorted sub-folder names and labels their index; files are walked in sorted
    order and kept when their extension is one of jpg/jpeg/png (case-insensitive).

    Returns:
        paths: image paths, labels: class index per path, class_names: sorted class folder names.
    Raises:
        FileNotFoundError: ``root`` is missing, has no class folders, or a class holds no image.
    """
    # imported here: only listing needs torchvision, and it costs ~2 s of start-up
    from torchvision.datasets.folder import find_classes, make_dataset

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist: pass the split folder of an ImageFolder tree "
            "(e.g. .../imagenet100/val holding one sub-folder per class)"
        )
    try:
        class_names, class_to_idx = find_classes(root)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"image folder {root} has no class sub-folders: expected root/<class>/<image>.jpg"
        ) from err
    try:
        samples = make_dataset(root, class_to_idx, extensions=IMAGE_EXTENSIONS)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"image folder {root}: {err} Put at least one image in every class folder or remove "
            "the empty ones."
        ) from err
    paths = [path for path, _ in samples]
    labels = [label for _, label in samples]
    return paths, labels, class_names


def _check_inputs(
    train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
    num_classes: int, k: int, temperature: float,
) -> None:
    if train_feats.ndim != 2 or test_feats.ndim != 2:
        raise ValueError(
            f"k-NN features must be 2-D [n, d]; got train {tuple(train_feats.shape)} and test "
            f"{tuple(test_feats.shape)}"
        )
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {train_feats.shape[1]} vs "
            f"{test_feats.shape[1]}; extract both with the same model"
        )
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError(
            f"train_labels must be [n] = [{train_feats.shape[0]}]; got {tuple(train_labels.shape)}"
        )
    if k < 1 or temperature <= 0 or num_classes < 1:
        raise ValueError(
            f"need k >= 1, temperature > 0 and num_classes >= 1; got k={k}, "
            f"temperature={temperature}, num_classes={num_classes}"
        )
    if train_labels.numel() and (train_labels.min() < 0 or train_labels.max() >= num_classes):
        raise ValueError(
            f"train labels must lie in [0, {num_classes}); got range "
            f"[{int(train_labels.min())}, {int(train_labels.max())}]"
        )


@torch.no_grad()
def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
    gather: bool = True,
) -> torch.Tensor:
    """Class scores of DINO's weighted k-NN vote.

    Args:
        train_feats: [n, d] training features (this rank's shard under torch.distributed).
        train_labels: [n] int class indices in [0, num_classes).
        test_feats: [m, d] features to classify (this rank's shard; not gathered).
        num_classes: C.
        k: neighbours per query (clipped to the bank size).
        temperature: T in the vote weight exp(cos / T).
        chunk: test features scored per step; memory is O(chunk x n_total).
        gather: all-gather the training bank when a process group is initialised.
    Returns:
        [m, C] float32 scores: sum over the k neighbours of exp(cos / T), per neighbour's class.
    """
    train_labels = train_labels.long()
    _check_inputs(train_feats, train_labels, test_feats, num_classes, k, temperature)
    if gather:
        train_feats = gather_rows(train_feats)
        train_labels = gather_rows(train_labels)
    if train_feats.shape[0] == 0:
        raise ValueError(
            "the k-NN training bank is empty: extract features of the train split first"
        )
    bank = F.normalize(train_feats.float(), dim=1).t()  # [d, n]
    train_labels = train_labels.to(bank.device)
    test_feats = test_feats.to(bank.device)
    k = min(k, bank.shape[1])
    scores = torch.zeros(test_feats.shape[0], num_classes, device=bank.device)  # [m, C]
    for start in range(0, test_feats.shape[0], chunk):
        queries = F.normalize(test_feats[start : start + chunk].float(), dim=1)  # [c, d]
        similarity = queries @ bank  # [c, n]
        top_sim, top_idx = similarity.topk(k, dim=1, largest=True, sorted=True)  # [c, k]
        neighbour_labels = train_labels[top_idx]  # [c, k]
        weights = (top_sim / temperature).exp()  # [c, k]
        scores[start : start + chunk].scatter_add_(1, neighbour_labels, weights)
    return scores


@torch.no_grad()
def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> dict[str, float]:
    """Top-1 and top-5 k-NN accuracy in percent (top-5 counts min(5, k, C) best classes, as DINO).

    Under torch.distributed, counts are summed over ranks, so every rank returns the global value.
    Ties between class scores are broken towards the lower class index.
    """
    if test_labels.shape != (test_feats.shape[0],):
        raise ValueError(
            f"test_labels must be [m] = [{test_feats.shape[0]}]; got {tuple(test_labels.shape)}"
        )
    scores = knn_classify(
        train_feats, train_labels, test_feats, num_classes, k=k, temperature=temperature,
        chunk=chunk,
    )  # [m, C]
    top = min(5, k, num_classes)
    ranked = scores.argsort(dim=1, descending=True, stable=True)[:, :top]  # [m, top]
    correct = ranked.eq(test_labels.long().to(ranked.device).view(-1, 1))  # [m, top]
    counts = torch.tensor(
        [correct[:, 0].sum().item(), correct.any(dim=1).sum().item(), float(correct.shape[0])],
        dtype=torch.float64, device=scores.device,
    )
    if multi_rank():
        dist.all_reduce(counts)
    total = counts[2].item()
    if total == 0:
        raise ValueError("no test features to classify: the k-NN test split is empty")
    return {"top1": 100.0 * counts[0].item() / total, "top5": 100.0 * counts[1].item() / total}
