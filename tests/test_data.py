"""Datasets: each layout on tiny synthetic fixtures, load errors, splits, sampling; one real-data check."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import need_shared
from poster_fer.data import (
    AFFECTNET7_CLASSES,
    AFFECTNET8_CLASSES,
    FER2013_CLASSES,
    FERPLUS_CLASSES,
    RAFDB_CLASSES,
    DatasetError,
    Fer2013Dataset,
    FerPlusDataset,
    build_dataset,
    build_transform,
    class_balanced_sampler,
    ferplus_majority,
    ferplus_target,
    holdout_split,
    load_fer2013_table,
)

# --------------------------------------------------------------------------------------------- fixtures ----


def _save_image(path: Path, size: tuple[int, int] = (100, 100), seed: int = 0, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# (emotion, Usage) of the synthetic fer2013.csv rows, and the FER+ row describing each.
FER_ROWS = [
    (3, "Training"),
    (0, "Training"),
    (6, "PublicTest"),
    (5, "PrivateTest"),
    (2, "Training"),
    (4, "PrivateTest"),
    (1, "Training"),
]
FERPLUS_ROWS = [
    ("fer0000000.png", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]),  # ones zeroed: 4 of 9 is no majority -> unknown
    ("fer0000001.png", [5, 0, 1, 1, 1, 1, 1, 0, 0, 0]),  # 5 of 10 is no majority, but 5 of 5 after outliers
    ("", [3, 3, 0, 0, 0, 0, 0, 0, 4, 0]),  # empty name: FER+ dropped the image
    ("fer0000003.png", [0, 0, 0, 0, 0, 0, 0, 0, 2, 8]),  # majority NF (not a face)
    ("fer0000004.png", [0, 2, 6, 0, 0, 0, 0, 2, 0, 0]),  # surprise
    ("fer0000005.png", [0, 7, 0, 0, 3, 0, 0, 0, 0, 0]),  # happiness
    ("fer0000006.png", [0, 0, 0, 0, 0, 0, 0, 0, 9, 1]),  # majority unknown
]


def _pixels(i: int) -> np.ndarray:
    return ((np.arange(48 * 48) * (i + 1)) % 256).astype(np.uint8)


def _fer_lines(rows=FER_ROWS, pixel_text=None) -> list[str]:
    lines = ["emotion,pixels,Usage"]
    for i, (emo, usage) in enumerate(rows):
        text = pixel_text(i) if pixel_text else " ".join(map(str, _pixels(i)))
        lines.append(f"{emo},{text},{usage}")
    return lines


def _write_fer(folder: Path, lines: list[str], gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if gz:
        path = folder / "fer2013.csv.gz"
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path = folder / "fer2013.csv"
        path.write_text(text)
    return path


def _write_ferplus(folder: Path, rows=FERPLUS_ROWS, usages=None) -> Path:
    path = folder / "fer2013new.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                    "fear", "contempt", "unknown", "NF"])  # fmt: skip
        for i, (name, votes) in enumerate(rows):
            usage = usages[i] if usages else FER_ROWS[i][1]
            w.writerow([usage, name, *votes])
    return path


@pytest.fixture
def fer_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "fer"
    _write_fer(folder, _fer_lines())
    _write_ferplus(folder)
    return folder


RAF_ROWS = [("train_00001.jpg", 5), ("train_00002.jpg", 1), ("train_00003.jpg", 7), ("test_0001.jpg", 4),
            ("test_0002.jpg", 6)]  # fmt: skip


def _make_raf(root: Path, rows=RAF_ROWS) -> Path:
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {lab}\n" for n, lab in rows))
    for i, (name, _) in enumerate(rows):
        _save_image(root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg", seed=i)
    return root


# ------------------------------------------------------------------------------------------- FER2013 ----


@pytest.mark.parametrize("gz", [False, True])
def test_fer2013_splits_labels_pixels(tmp_path: Path, gz: bool) -> None:
    path = _write_fer(tmp_path, _fer_lines(), gz=gz)
    train = build_dataset("fer2013", tmp_path, "train")
    assert train.classes == FER2013_CLASSES
    assert train.targets == [3, 0, 2, 1]
    assert len(build_dataset("fer2013", path, "PublicTest")) == 1
    test = build_dataset("fer2013", path, "test")
    assert test.targets == [5, 4]
    assert build_dataset("fer2013", path, "all").report.num_samples == len(FER_ROWS)
    image, target = train[1]
    assert image.mode == "RGB" and image.size == (48, 48) and target == 0
    arr = np.asarray(image)
    assert (arr[..., 0] == arr[..., 2]).all()
    assert np.array_equal(arr[..., 0].ravel(), _pixels(1))
    assert train.report.class_counts["Happy"] == 1


def test_fer2013_gz_and_csv_parse_identically_and_cache(tmp_path: Path) -> None:
    a = load_fer2013_table(_write_fer(tmp_path / "a", _fer_lines()))
    b = load_fer2013_table(_write_fer(tmp_path / "b", _fer_lines(), gz=True))
    assert a.pixels.dtype == np.uint8 and a.pixels.shape == (len(FER_ROWS), 48, 48)
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.emotions, b.emotions)
    assert load_fer2013_table(tmp_path / "a" / "fer2013.csv") is a  # parsed once per process
    assert not a.pixels.flags.writeable


def test_cached_file_parser_parses_once_and_again_after_a_change(tmp_path: Path) -> None:
    """Issue 36: FER2013's pixels and FER+'s votes share one cached-parse loader: one parse per file version."""
    import os

    from poster_fer.data.base import cached_file_parser
    from poster_fer.errors import DatasetError

    calls = []

    def parse(path: Path) -> str:
        calls.append(path)
        return path.read_text()

    load = cached_file_parser(parse, "no such file")
    f = tmp_path / "x.txt"
    f.write_text("one")
    assert load(f) == "one" and load(str(f)) == "one" and len(calls) == 1
    f.write_text("two!")
    os.utime(f, ns=(1, 2))  # a new size and mtime: a new version of the file
    assert load(f) == "two!" and len(calls) == 2
    with pytest.raises(DatasetError, match="no such file"):
        load(tmp_path / "missing.txt")


def test_fer2013_bad_rows_raise_with_line_or_skip(tmp_path: Path) -> None:
    def pixels(i: int) -> str:
        if i == 1:
            return " ".join(["7"] * 2000)  # wrong count
        if i == 4:
            return " ".join(["300"] + ["7"] * 2303)  # out of range
        return " ".join(["7"] * 2304)

    lines = _fer_lines(pixel_text=pixels)
    lines[6] = lines[6].replace("4,", "9,", 1)  # row 5 (line 7): emotion 9
    path = _write_fer(tmp_path, lines)
    with pytest.raises(DatasetError, match=r"fer2013\.csv:3: expected 2304 pixel values") as info:
        Fer2013Dataset(path, "train")
    assert info.value.line == 3 and info.value.path.name == "fer2013.csv"
    with pytest.warns(UserWarning, match="skipped 2 broken rows"):
        train = Fer2013Dataset(path, "train", on_error="skip")
    assert train.targets == [3, 1]
    assert train.report.skipped == {"wrong pixel count": 1, "bad pixels": 1}
    assert any(m.endswith(":6: pixel value outside 0..255") for m in train.report.messages)
    with pytest.raises(DatasetError, match=r":7: emotion '9' is not in 0\.\.6"):
        Fer2013Dataset(path, "test")
    assert len(Fer2013Dataset(path, "val")) == 1  # the broken rows belong to other splits


def test_fer2013_a_pixel_that_is_not_an_integer_is_a_bad_row_not_a_crash(tmp_path: Path) -> None:
    """numpy >= 2.4's fromstring raises on '1.5' or 'x' (it used to stop early): the row is still named."""
    for bad in ("1.5", "x"):
        def pixels(i: int, bad: str = bad) -> str:
            return " ".join([bad] + ["7"] * 2303) if i == 1 else " ".join(["7"] * 2304)

        lines = _fer_lines(pixel_text=pixels)
        path = _write_fer(tmp_path / bad, lines)
        with pytest.raises(DatasetError, match=r"fer2013\.csv:3: pixels holds a value that is not an integer"):
            Fer2013Dataset(path, "train")
        with pytest.warns(UserWarning, match="skipped 1 broken row"):
            train = Fer2013Dataset(path, "train", on_error="skip")
        assert train.report.skipped == {"bad pixels": 1}


def test_fer2013_bad_header_and_truncated_gzip(tmp_path: Path) -> None:
    path = _write_fer(tmp_path / "a", ["emotion,pixels", "0,1 2 3"])
    with pytest.raises(DatasetError, match=r":1: expected header"):
        load_fer2013_table(path)
    gz = _write_fer(tmp_path / "b", _fer_lines(), gz=True)
    _truncate(gz)
    with pytest.raises(DatasetError, match="gzip stream ends early"):
        load_fer2013_table(gz)


# ---------------------------------------------------------------------------------------------- FER+ ----


def test_ferplus_majority_rule_by_hand() -> None:
    votes = np.array([v for _, v in FERPLUS_ROWS])
    # Hand-computed: zero the 1s, then a class needs more than half of what is left.
    assert ferplus_majority(votes).tolist() == [-1, 0, -1, 9, 2, 1, 8]
    assert ferplus_majority([0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) == -1
    assert ferplus_majority([3, 3, 0, 0, 0, 0, 0, 0, 0, 0]) == -1  # a tie is not a majority
    assert ferplus_target([0, 2, 6, 0, 0, 0, 0, 2, 0, 0]) == (2, "")
    assert ferplus_target([0, 0, 0, 0, 0, 0, 0, 0, 2, 8]) == (None, "majority NF")


def test_ferplus_soft_targets_follow_microsoft() -> None:
    # Top votes until 75% are covered (ties together): 6 then both 2s.
    dist, _ = ferplus_target([0, 2, 6, 0, 0, 0, 0, 2, 0, 0], "crossentropy")
    np.testing.assert_allclose(dist, [0, 0.2, 0.6, 0, 0, 0, 0, 0.2], atol=1e-6)
    # No majority, but 4+3 of 9 outlier-free votes pass the 75% cover and the 50% floor.
    dist, _ = ferplus_target([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], "probability")
    np.testing.assert_allclose(dist, [4 / 7, 0, 0, 0, 3 / 7, 0, 0, 0], atol=1e-6)
    dist, _ = ferplus_target([6, 1, 2, 0, 2, 0, 0, 0, 0, 0], "votes")  # plain shares, ones removed
    np.testing.assert_allclose(dist, [0.6, 0, 0.2, 0, 0.2, 0, 0, 0], atol=1e-6)
    multi, _ = ferplus_target([5, 0, 2, 0, 3, 0, 0, 0, 0, 0], "multi_target")
    np.testing.assert_allclose(
        multi, [0.999 + 0.001, 0.001, 0.001, 0.001, 1.0, 0.001, 0.001, 0.001], atol=1e-6
    )
    assert ferplus_target([2, 2, 2, 2, 2, 0, 0, 0, 0, 0], "crossentropy") == (
        None,
        "unknown (votes too spread)",
    )


def test_ferplus_dataset_majority(fer_dir: Path) -> None:
    train = build_dataset("ferplus", fer_dir, "train")
    assert train.classes == FERPLUS_CLASSES
    assert train.targets == [0, 2]  # rows 1 and 4
    assert train.rows.tolist() == [1, 4]
    assert train.image_names == ["fer0000001.png", "fer0000004.png"]
    assert train.report.dropped == {"unknown (no majority)": 1, "majority unknown": 1}
    val = build_dataset("ferplus", fer_dir, "valid")
    assert len(val) == 0 and val.report.dropped == {"no image name (dropped by FER+)": 1}
    test = build_dataset("ferplus", fer_dir / "fer2013.csv", "PrivateTest")
    assert test.targets == [1] and test.report.dropped == {"majority NF": 1}
    image, target = test[0]
    assert np.array_equal(np.asarray(image)[..., 1].ravel(), _pixels(5)) and target == 1


@pytest.mark.parametrize("mode", ["probability", "crossentropy", "votes", "multi_target"])
def test_ferplus_soft_datasets(fer_dir: Path, mode: str) -> None:
    ds = build_dataset("ferplus", fer_dir, "train", label_mode=mode)
    assert ds.soft and ds.targets.shape == (len(ds), 8) and ds.targets.dtype == np.float32
    if mode != "multi_target":
        np.testing.assert_allclose(ds.targets.sum(axis=1), 1.0, atol=1e-6)
    _, target = ds[0]
    assert isinstance(target, torch.Tensor) and target.shape == (8,)
    expected_rows = [0, 1, 4] if mode in ("probability", "crossentropy", "multi_target") else [1, 4]
    assert ds.rows.tolist() == expected_rows
    assert ds.labels.tolist() == ([0, 0, 2] if len(expected_rows) == 3 else [0, 2])


def test_ferplus_structural_errors(tmp_path: Path) -> None:
    folder = tmp_path / "fer"
    _write_fer(folder, _fer_lines())
    _write_ferplus(folder, FERPLUS_ROWS[:-1], usages=[u for _, u in FER_ROWS])
    with pytest.raises(DatasetError, match="6 label rows for 7 image rows"):
        build_dataset("ferplus", folder, "train")
    usages = [u for _, u in FER_ROWS]
    usages[4] = "PublicTest"
    _write_ferplus(folder, usages=usages)
    with pytest.raises(DatasetError, match=r"fer2013new\.csv:6: Usage 'PublicTest' disagrees"):
        build_dataset("ferplus", folder, "train")
    with pytest.warns(UserWarning):
        ds = build_dataset("ferplus", folder, "train", on_error="skip")
    assert ds.targets == [0] and ds.report.skipped == {"usage mismatch": 1}
    with pytest.raises(DatasetError, match="class-count mismatch"):
        build_dataset("ferplus", folder, "test", class_names=["a", "b"])


# -------------------------------------------------------------------------------------------- RAF-DB ----


def test_rafdb_splits_and_labels(tmp_path: Path) -> None:
    root = _make_raf(tmp_path / "raf")
    train = build_dataset("rafdb", root, "train")
    assert train.classes == RAFDB_CLASSES
    assert train.targets == [4, 0, 6]  # labels 1..7 -> 0..6
    assert [p.name for p in train.paths] == ["train_00001_aligned.jpg", "train_00002_aligned.jpg",
                                             "train_00003_aligned.jpg"]  # fmt: skip
    assert build_dataset("rafdb", root, "test").targets == [3, 5]
    image, label = train[0]
    assert image.size == (100, 100) and image.mode == "RGB" and label == 4
    assert train.report.class_counts["Sadness"] == 1
    with pytest.raises(DatasetError, match="no 'val' split.*val_fraction"):
        build_dataset("rafdb", root, "val")


def test_rafdb_errors_name_file_and_line(tmp_path: Path) -> None:
    rows = [*RAF_ROWS, ("train_00009.jpg", 8)]
    root = _make_raf(tmp_path / "raf", rows)
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    with pytest.raises(DatasetError, match=r"list_patition_label\.txt:6: label '8' is not in 1\.\.7"):
        build_dataset("rafdb", root, "train")
    (root / "Image" / "aligned" / "train_00002_aligned.jpg").unlink()
    _truncate(root / "Image" / "aligned" / "train_00003_aligned.jpg")
    label_file.write_text("".join(f"{n} {lab}\n" for n, lab in RAF_ROWS))
    with pytest.raises(
        DatasetError, match=r"list_patition_label\.txt:2: image file not found: .*train_00002"
    ):
        build_dataset("rafdb", root, "train")
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = build_dataset("rafdb", root, "train", on_error="skip")
    assert ds.targets == [4]
    assert ds.report.skipped == {"missing image": 1, "unreadable image": 1}
    assert any("truncated" in m and ":3:" in m for m in ds.report.messages)
    # Cheaper checks miss the truncation but still catch the missing file.
    with pytest.warns(UserWarning):
        assert len(build_dataset("rafdb", root, "train", on_error="skip", verify="header")) == 2


# ------------------------------------------------------------------------------------------ AffectNet ----


def _make_affectnet_csv(root: Path) -> Path:
    columns = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression"
    header = columns + ",valence,arousal"
    rows = [("1/a.jpg", 0), ("1/b.jpg", 1), ("2/c.jpg", 7), ("2/d.jpg", 8), ("2/e.jpg", 10), ("3/f.jpg", 6)]
    lines = [header]
    for i, (rel, expr) in enumerate(rows):
        _save_image(root / "Manually_Annotated_Images" / rel, size=(120, 90), seed=i)
        lines.append(f'{rel},10,5,60,70,"1.0;2.0;3.0",{expr},0.1,-0.2')
    (root / "training.csv").write_text("\n".join(lines) + "\n")
    _save_image(root / "Manually_Annotated_Images" / "9" / "v.jpg", seed=9)
    (root / "validation.csv").write_text(f'{header}\n9/v.jpg,0,0,50,50,"",3,0,0\n')
    return root


def test_affectnet_official_csv(tmp_path: Path) -> None:
    root = _make_affectnet_csv(tmp_path / "an")
    ds8 = build_dataset("affectnet8", root, "train")
    assert ds8.classes == AFFECTNET8_CLASSES and ds8.targets == [0, 1, 7, 6]
    assert ds8.report.dropped == {"expression 8 (none)": 1, "expression 10 (no face)": 1}
    ds7 = build_dataset("affectnet7", root, "train", crop_face=True)
    assert ds7.classes == AFFECTNET7_CLASSES and ds7.targets == [0, 1, 6]
    assert ds7.report.dropped["Contempt (7-class)"] == 1
    assert ds7.get_image(0).size == (60, 70)  # cropped to the face box
    assert ds8.get_image(0).size == (120, 90)
    assert build_dataset("affectnet8", root, "test").targets == [3]
    with pytest.raises(DatasetError, match="validation set is its test set"):
        build_dataset("affectnet8", root, "val")
    text = (root / "training.csv").read_text().replace(",6,0.1", ",12,0.1")
    (root / "training.csv").write_text(text)
    with pytest.raises(DatasetError, match=r"training\.csv:7: expression '12'"):
        build_dataset("affectnet8", root, "train")


def test_affectnet_list_files_and_sampler(tmp_path: Path) -> None:
    root = tmp_path / "an"
    names = [f"img{i}.jpg" for i in range(8)]
    labels = [0, 0, 0, 0, 0, 1, 2, 2]
    for i, n in enumerate(names):
        _save_image(root / "train" / n, size=(32, 32), seed=i)
    (root / "train_annotations_7class.txt").write_text(
        "".join(f"{n} {lab}\n" for n, lab in zip(names, labels, strict=True))
    )
    ds = build_dataset("affectnet", root, "train")  # 7 classes inferred, images found under root/train
    assert ds.classes == AFFECTNET7_CLASSES and ds.targets == labels
    (root / "train_annotations_8class.txt").write_text("img0.jpg 7\nimg1.jpg 8\n")
    with pytest.raises(DatasetError, match="pass num_classes"):
        build_dataset("affectnet", root, "train")
    with pytest.raises(DatasetError, match=r"train_annotations_8class\.txt:2: label '8' is not in 0\.\.7"):
        build_dataset("affectnet", root, "train", num_classes=8)

    sampler = class_balanced_sampler(ds, generator=torch.Generator().manual_seed(0))
    assert len(sampler) == len(ds)
    np.testing.assert_allclose(sampler.weights.numpy(), [0.2] * 5 + [1.0, 0.5, 0.5])
    draws = np.bincount(np.asarray(ds.targets)[list(class_balanced_sampler(labels, num_samples=3000))])
    assert draws.min() > 850  # about 1000 per class despite 5:1:2 frequencies


# ------------------------------------------------------------------------------------- folder and CSV ----


def test_folder_tree(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _save_image(root / "train" / "sad" / "a.png", size=(40, 40), fmt="PNG")
    _save_image(root / "train" / "happy" / "sub" / "b.jpg", size=(40, 40))
    _save_image(root / "train" / "happy" / "c.jpg", size=(40, 40))
    (root / "train" / "happy" / "notes.txt").write_text("not an image")
    _save_image(root / "test" / "happy" / "d.jpg", size=(40, 40))
    _save_image(root / "test" / "sad" / "e.jpg", size=(40, 40))
    train = build_dataset("folder", root, "train")
    assert train.classes == ["happy", "sad"] and train.targets == [0, 0, 1]
    assert len(build_dataset("folder", root, "test")) == 2
    given = build_dataset("folder", root, "training", classes=["sad", "happy"])
    assert given.targets == [0, 1, 1]
    with pytest.raises(DatasetError, match="class-count mismatch: no folder for classes"):
        build_dataset("folder", root, "train", classes=["happy", "sad", "angry"])
    with pytest.raises(DatasetError, match="class-count mismatch: expected 7"):
        build_dataset("folder", root, "train", num_classes=7)
    with pytest.raises(DatasetError, match="no 'val' folder"):
        build_dataset("folder", root, "val")


def test_csv_manifest(tmp_path: Path) -> None:
    for i, n in enumerate(["a", "b", "c", "d"]):
        _save_image(tmp_path / "imgs" / f"{n}.jpg", size=(20, 20), seed=i)
    (tmp_path / "m.csv").write_text(
        "path,label,split\nimgs/a.jpg,happy,train\nimgs/b.jpg,sad,train\nimgs/c.jpg,happy,test\n"
        f"{tmp_path / 'imgs' / 'd.jpg'},neutral,train\n"
    )
    train = build_dataset("csv", tmp_path / "m.csv", "train")
    assert train.classes == ["happy", "neutral", "sad"] and train.targets == [0, 2, 1]
    assert build_dataset("csv", tmp_path / "m.csv", "test").targets == [0]
    (tmp_path / "train.csv").write_text("imgs/a.jpg,2\nimgs/b.jpg,0\n")
    ints = build_dataset("csv", tmp_path, "train", num_classes=4)
    assert ints.classes == ["0", "1", "2", "3"] and ints.targets == [2, 0]
    (tmp_path / "bad.csv").write_text("imgs/a.jpg,0\nimgs/b.jpg,5\nimgs/zz.jpg,1\n")
    with pytest.raises(DatasetError, match=r"bad\.csv:2: label 5 is not in 0\.\.2"):
        build_dataset("csv", tmp_path / "bad.csv", "all", classes=["x", "y", "z"])
    with pytest.warns(UserWarning):
        ds = build_dataset("csv", tmp_path / "bad.csv", "all", classes=["x", "y", "z"], on_error="skip")
    assert ds.targets == [0] and ds.report.skipped == {"bad label": 1, "missing image": 1}


# ------------------------------------------------------------------------------------ splits, loaders ----


def test_holdout_split_is_deterministic_and_stratified(fer_dir: Path, tmp_path: Path) -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 20
    for i in range(len(labels)):
        _save_image(tmp_path / "t" / f"c{labels[i]}" / f"{i:03d}.png", size=(8, 8), seed=i, fmt="PNG")
    ds = build_dataset("folder", tmp_path / "t", "all")
    tr, va = holdout_split(ds, 0.2, seed=3)
    tr2, va2 = holdout_split(ds, 0.2, seed=3)
    assert va.indices.tolist() == va2.indices.tolist()
    assert holdout_split(ds, 0.2, seed=4)[1].indices.tolist() != va.indices.tolist()
    assert sorted([*tr.indices.tolist(), *va.indices.tolist()]) == list(range(100))
    assert va.report.class_counts == {"c0": 10, "c1": 6, "c2": 4}
    assert va.classes == ds.classes and va[0][1] == ds.targets[int(va.indices[0])]
    via_factory = build_dataset("folder", tmp_path / "t", "val", val_fraction=0.2, val_seed=3)
    assert via_factory.indices.tolist() == va.indices.tolist()
    assert len(build_dataset("folder", tmp_path / "t", "train", val_fraction=0.2, val_seed=3)) == 80

    soft = build_dataset("ferplus", fer_dir, "train", label_mode="crossentropy")
    _, soft_val = holdout_split(
        soft, 0.5, seed=0, val_transform=build_transform("plain", train=False, size=32)
    )
    image, target = soft_val[0]
    assert image.shape == (3, 32, 32) and target.shape == (8,)


def test_dataloader_batches(tmp_path: Path) -> None:
    root = _make_raf(tmp_path / "raf")
    ds = build_dataset("rafdb", root, "train", transform=build_transform("official_v1", train=True, size=64))
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    assert labels.tolist() == [4, 0, 6]


def test_class_lists_have_one_definition() -> None:
    """Readers and the official-checkpoint loader share one object per class list (poster_fer.constants)."""
    from poster_fer import constants
    from poster_fer.data import affectnet, fer2013, ferplus, rafdb
    from poster_fer.weights import AFFECTNET_CLASSES, RAFDB_CLASSES

    assert rafdb.RAFDB_CLASSES is RAFDB_CLASSES is constants.RAFDB_CLASSES
    assert affectnet.AFFECTNET8_CLASSES is AFFECTNET_CLASSES is constants.AFFECTNET8_CLASSES
    assert affectnet.AFFECTNET7_CLASSES is constants.AFFECTNET7_CLASSES == AFFECTNET_CLASSES[:7]
    assert ferplus.FERPLUS_CLASSES is constants.FERPLUS_CLASSES == ferplus.FERPLUS_VOTE_COLUMNS[:8]
    assert fer2013.FER2013_CLASSES is constants.FER2013_CLASSES


# --------------------------------------------------------------------------------------- real data ----


def test_real_fer2013_and_ferplus_counts() -> None:
    folder = need_shared("data", "fer2013", "fer2013.csv.gz").parent
    counts = {s: len(build_dataset("fer2013", folder, s)) for s in ("Training", "PublicTest", "PrivateTest")}
    assert counts == {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}
    total = np.bincount(load_fer2013_table(folder / "fer2013.csv.gz").emotions, minlength=7)
    assert total.tolist() == [4953, 547, 5121, 8989, 6077, 4002, 6198]
    # FER+ majority labels (Microsoft's rule), measured once and pinned here.
    expected = {
        "train": [8740, 7287, 3149, 3014, 2100, 119, 532, 119],
        "val": [1182, 865, 415, 351, 287, 24, 62, 13],
        "test": [1090, 893, 396, 384, 273, 18, 83, 16],
    }
    for split, per_class in expected.items():
        ds = FerPlusDataset(folder / "fer2013.csv.gz", folder / "fer2013new.csv", split)
        assert list(ds.report.class_counts.values()) == per_class, split
    assert sum(expected["train"]) == 25060 and sum(expected["test"]) == 3153


def test_data_kind_follows_what_data_is_and_csv_columns_are_checked_up_front(tmp_path):
    """Issue 39 item 1: --data labels.csv reads a CSV whatever the recipe's generic kind; a header of other
    names is refused at once, naming the columns; a CSV given to the folder reader says how to read it."""
    from PIL import Image

    from poster_fer.data import DatasetError
    from poster_fer.data.generic import CsvManifestDataset, ImageFolderDataset
    from poster_fer_train.recipe import kind_for_root, load_recipe

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    good = tmp_path / "labels.csv"
    good.write_text("path,label\na.png,happy\n")
    assert load_recipe("finetune", data_root=str(good))["data"]["kind"] == "csv"
    assert load_recipe("finetune", data_root=str(tmp_path))["data"]["kind"] == "folder"
    assert kind_for_root("ferplus", str(good)) == "ferplus"  # a dataset's own kind is kept
    assert kind_for_root("csv", str(tmp_path)) == "folder"
    other = tmp_path / "other.csv"
    other.write_text("file,emotion\na.png,happy\n")
    with pytest.raises(DatasetError, match="missing columns path,label.*file,emotion"):
        CsvManifestDataset(other)
    headerless = tmp_path / "bare.csv"
    headerless.write_text("a.png,happy\n")
    assert len(CsvManifestDataset(headerless)) == 1  # a header stays optional
    with pytest.raises(DatasetError, match="data.kind=csv"):
        ImageFolderDataset(good)
