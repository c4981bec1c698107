"""ImageNet-1K download -> the ImageNet-100 ImageFolder that k-NN evaluation reads.

    python -m preprocess.imagenet100 --imagenet /datasets/imagenet --out data/imagenet100
    python -m preprocess.imagenet100 --imagenet /datasets/imagenet --out data/imagenet100 --copy

Writes OUT/train/<wnid>/ and OUT/val/<wnid>/ for the 100 classes of
preprocess/imagenet100_classes.txt (CMC's subset: Tian et al. 2020; the file names its source),
as symbolic links to the ImageNet files (--copy: copies). It reads the two usual layouts of an
ImageNet-1K download:
- ImageFolder: ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (torchvision's layout, and
  the official tarballs once the validation images are sorted into class folders);
- Kaggle (ILSVRC/Data/CLS-LOC): train/<wnid>/ as above, val/ flat, with the labels in
  ROOT/LOC_val_solution.csv (or --val-labels FILE: `ImageId,PredictionString` rows whose
  prediction string starts with the WordNet ID).
Every class must have images in both splits, else it stops (exit 2) and names the missing ones.
The folder is built as OUT.partial and renamed when complete, so an interrupted run leaves no
half-built OUT; a complete OUT is kept unless --overwrite. Then evaluate with
`launch/evaluate.py --knn-train data/imagenet100/train --knn-val data/imagenet100/val`.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

from megatron_ego.cli_help import make_parser

CLASSES_FILE = Path(__file__).with_name("imagenet100_classes.txt")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class LayoutError(ValueError):
    """The download is not an ImageNet-1K layout this script reads, or lacks classes."""


def read_classes(path: Path = CLASSES_FILE) -> list[str]:
    """The WordNet IDs of a class-list file (one per line, '#' comments)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def find_root(root: Path) -> Path:
    """The folder holding train/ and val/ (ROOT itself, or Kaggle's ILSVRC/Data/CLS-LOC)."""
    for candidate in (root, root / "ILSVRC" / "Data" / "CLS-LOC"):
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    raise LayoutError(f"--imagenet {root} holds no train/ and val/ folders (nor "
                      "ILSVRC/Data/CLS-LOC/): pass the folder of the ImageNet-1K download")


def val_labels(path: Path) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv: image id -> WordNet ID."""
    labels = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                labels[row["ImageId"]] = row["PredictionString"].split()[0]
            except (KeyError, IndexError) as err:
                raise LayoutError(f"{path}: expected ImageId,PredictionString rows") from err
    return labels


def split_images(split_dir: Path, classes: list[str], labels: dict[str, str] | None
                 ) -> dict[str, list[Path]]:
    """The images of each class in one split: class folders, or a flat folder and `labels`."""
    if labels is None:
        return {c: _images(split_dir / c) if (split_dir / c).is_dir() else [] for c in classes}
    wanted = set(classes)
    found: dict[str, list[Path]] = {c: [] for c in classes}
    for image in _images(split_dir):
        wnid = labels.get(image.stem)
        if wnid in wanted:
            found[wnid].append(image)
    return found


def plan(root: Path, classes: list[str], labels_file: Path | None) -> dict[str, dict[str, list[Path]]]:
    """{split: {wnid: images}}, after checking that every class has images in both splits."""
    base = find_root(root)
    val_flat = not any((base / "val" / c).is_dir() for c in classes)
    labels = None
    if val_flat:
        labels_file = labels_file or next(
            (p for p in (root / "LOC_val_solution.csv", base / "LOC_val_solution.csv") if p.is_file()),
            None)
        if labels_file is None:
            raise LayoutError(f"{base / 'val'} has no class folders and no LOC_val_solution.csv "
                              "was found: pass --val-labels FILE")
        labels = val_labels(labels_file)
    images = {"train": split_images(base / "train", classes, None),
              "val": split_images(base / "val", classes, labels)}
    for split, by_class in images.items():
        missing = [c for c, found in by_class.items() if not found]
        if missing:
            raise LayoutError(f"{len(missing)} of the {len(classes)} classes have no {split} "
                              f"images in {base / split}: {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''}")
    return images


def build(images: dict[str, dict[str, list[Path]]], out: Path, copy: bool) -> dict[str, int]:
    """Write the ImageFolder into OUT.partial, then rename it to OUT. Returns images per split."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # a run cut off before its rename
    counts = {}
    for split, by_class in images.items():
        counts[split] = 0
        for wnid, files in by_class.items():
            folder = partial / split / wnid
            folder.mkdir(parents=True)
            for image in files:
                target = folder / image.name
                if copy:
                    shutil.copy2(image, target)
                else:
                    target.symlink_to(image.resolve())
            counts[split] += len(files)
    partial.rename(out)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--imagenet", required=True, help="ImageNet-1K download (train/ and val/)")
    p.add_argument("--out", required=True, help="ImageNet-100 ImageFolder to write")
    p.add_argument("--classes", default=None,
                   help="WordNet IDs, one a line (default: CMC's, preprocess/)")
    p.add_argument("--val-labels", default=None,
                   help="labels of a flat val/ folder (Kaggle's LOC_val_solution.csv)")
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing OUT")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        classes = read_classes(Path(args.classes) if args.classes else CLASSES_FILE)
        if out.exists() and not args.overwrite:
            raise LayoutError(f"{out} exists: pass --overwrite to rebuild it")
        images = plan(Path(args.imagenet), classes, Path(args.val_labels) if args.val_labels else None)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        counts = build(images, out, args.copy)
    except (LayoutError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    how = "copies" if args.copy else "links"
    print(f"ImageNet-100 ({len(classes)} classes) -> {out}: {counts['train']} train and "
          f"{counts['val']} val images ({how})\n"
          f"k-NN: --knn-train {out / 'train'} --knn-val {out / 'val'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
