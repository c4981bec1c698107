"""preprocess/imagenet100.py on fake ImageNet-1K downloads (ImageFolder and Kaggle layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from preprocess import imagenet100
from preprocess.imagenet100 import read_classes

CLASSES = read_classes()
OTHER = "n09999999"  # an ImageNet-1K class outside the subset


def _image(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _imagefolder(root: Path, skip_val: str | None = None) -> None:
    for i, wnid in enumerate([*CLASSES, OTHER]):
        for j in range(2):
            _image(root / "train" / wnid / f"{wnid}_{j}.JPEG", bytes([i, j]))
        if wnid != skip_val:
            _image(root / "val" / wnid / f"ILSVRC2012_val_{i:08d}.JPEG", bytes([i]))


def test_class_list_is_cmc_imagenet100():
    assert len(CLASSES) == len(set(CLASSES)) == 100
    assert all(len(c) == 9 and c[0] == "n" and c[1:].isdigit() for c in CLASSES)
    assert CLASSES[:3] == ["n02869837", "n01749939", "n02488291"]  # CMC's file order
    assert "HobbitLong/CMC" in imagenet100.CLASSES_FILE.read_text()  # where it comes from


def test_builds_the_100_class_imagefolder_as_links(tmp_path):
    src, out = tmp_path / "imagenet", tmp_path / "data" / "imagenet100"
    _imagefolder(src)
    assert imagenet100.main(["--imagenet", str(src), "--out", str(out)]) == 0
    for split, per_class in (("train", 2), ("val", 1)):
        folders = sorted(p.name for p in (out / split).iterdir())
        assert folders == sorted(CLASSES)  # the subset only
        for wnid in CLASSES:
            files = list((out / split / wnid).iterdir())
            assert len(files) == per_class
            assert all(f.is_symlink() and f.resolve().parent == (src / split / wnid).resolve()
                       for f in files)
    assert not (out.parent / "imagenet100.partial").exists()
    # a second run keeps the finished folder
    assert imagenet100.main(["--imagenet", str(src), "--out", str(out)]) == 2


def test_kaggle_layout_with_flat_val_and_copies(tmp_path):
    src = tmp_path / "kaggle"
    base = src / "ILSVRC" / "Data" / "CLS-LOC"
    rows = ["ImageId,PredictionString"]
    for i, wnid in enumerate([*CLASSES, OTHER]):
        _image(base / "train" / wnid / f"{wnid}_0.JPEG", bytes([i]))
        image_id = f"ILSVRC2012_val_{i:08d}"
        _image(base / "val" / f"{image_id}.JPEG", bytes([i, 7]))
        rows.append(f"{image_id},{wnid} 1 2 3 4")
    (src / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "in100"
    assert imagenet100.main(["--imagenet", str(src), "--out", str(out), "--copy"]) == 0
    for i, wnid in enumerate(CLASSES):
        (image,) = (out / "val" / wnid).iterdir()
        assert not image.is_symlink() and image.read_bytes() == bytes([i, 7])
    assert not (out / "val" / OTHER).exists()


def test_a_missing_class_stops_with_one_error_line(tmp_path, capsys):
    src = tmp_path / "imagenet"
    _imagefolder(src, skip_val=CLASSES[5])
    out = tmp_path / "in100"
    assert imagenet100.main(["--imagenet", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 of the 100 classes have no val images")
    assert CLASSES[5] in err[0]
    assert not out.exists()


@pytest.mark.parametrize("layout", ["empty", "flat-val-without-labels"])
def test_unreadable_layouts_say_what_to_pass(tmp_path, capsys, layout):
    src = tmp_path / "imagenet"
    (src / "train").mkdir(parents=True)
    if layout == "flat-val-without-labels":
        _image(src / "val" / "ILSVRC2012_val_00000001.JPEG", b"x")
    assert imagenet100.main(["--imagenet", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert ("--val-labels" if layout != "empty" else "--imagenet") in err
