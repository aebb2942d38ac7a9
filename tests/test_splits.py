"""The stable split: per-class shares, the same splits for the same data, old images never move
when images are added, duplicates (byte- or near-identical) never straddle splits, and a new
image that bridges groups already in different splits is reported."""

from __future__ import annotations

import csv
import logging
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.images import make_dataset
from tests.helpers.project import write_params
from tests.helpers.sources import bits_with_ones, make_class_folders, write_phash_image
from warmstart.layout import SPLIT_ASSIGNMENT_COLUMNS, SPLITS
from warmstart.stages.ingest import run_ingest


def ingest(work: Path, source: Path, **data: object) -> dict[str, dict[str, str]]:
    """Run ingest; the split assignments by source path."""
    params = write_params(work, source, data=data)
    run_ingest(params)
    with open(params.path("split_assignments"), newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == SPLIT_ASSIGNMENT_COLUMNS
        return {row["path"]: row for row in reader}


def split_of(rows: dict[str, dict[str, str]]) -> dict[str, str]:
    return {path: row["split"] for path, row in rows.items()}


def shares(rows: dict[str, dict[str, str]], label: str) -> dict[str, int]:
    return {s: sum(r["split"] == s and r["class"] == label for r in rows.values())
            for s in SPLITS}


def test_a_small_class_gets_its_share(tmp_path: Path) -> None:
    rows = ingest(tmp_path / "work", make_class_folders(tmp_path / "src",
                                                        {"cats": 100, "birds": 10}))
    assert shares(rows, "cats") == {"train": 80, "validation": 10, "test": 10}
    assert shares(rows, "birds") == {"train": 8, "validation": 1, "test": 1}


def test_same_data_same_splits_and_raw_matches_the_assignments(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"cats": 30, "dogs": 30})
    first = ingest(tmp_path / "a", source)
    assert ingest(tmp_path / "b", source) == first  # a fresh project: the same splits
    raw = tmp_path / "a" / "data" / "raw"
    for path, row in first.items():
        assert (raw / row["split"] / row["class"] / Path(path).name).is_file()


def test_adding_images_never_moves_an_existing_one(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"cats": 20, "dogs": 12})
    before = split_of(ingest(tmp_path / "work", source))
    make_class_folders(source, {"cats": 25, "dogs": 25}, first_seed=500)  # 50 new images
    after = ingest(tmp_path / "work", source)
    assert {p: s for p, s in split_of(after).items() if p in before} == before
    assert len(after) == len(before) + 50
    assert shares(after, "cats")["train"] in (35, 36, 37)  # new images keep the shares: 0.8 of 45


def test_a_grown_validation_split_keeps_its_held_out_test_images(tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", per_class={"train": 4, "validation": 10})
    before = split_of(ingest(tmp_path / "work", source))
    for image in list((source / "validation" / "cats").iterdir()):
        Image.open(image).rotate(90).save(image.with_name(f"new.{image.name}"))
    after = split_of(ingest(tmp_path / "work", source))
    assert {p: s for p, s in after.items() if p in before} == before
    assert sum(s == "test" for p, s in after.items() if "/cats/" in p) == 4  # 0.2 of 20


def pair_source(root: Path, pairs: int, seed: int = 0) -> Path:
    """``pairs`` photos in ``root/shapes/``, each with a copy re-encoded as a smaller JPEG."""
    rng = random.Random(seed)
    for index in range(pairs):
        bits = bits_with_ones(rng.sample(range(63), 31))
        original = write_phash_image(root / "shapes" / f"p{index}.png", bits, size=96)
        Image.open(original).convert("RGB").resize((64, 64)).save(
            root / "shapes" / f"p{index}_small.jpg", quality=85)
    return root


def test_near_duplicates_never_straddle_splits(tmp_path: Path) -> None:
    rows = ingest(tmp_path / "work", pair_source(tmp_path / "src", pairs=30))
    for index in range(30):
        a, b = rows[f"shapes/p{index}.png"], rows[f"shapes/p{index}_small.jpg"]
        assert (a["split"], a["group"]) == (b["split"], b["group"])
    assert len({r["split"] for r in rows.values()}) == 3  # groups, not everything, share a split


def test_byte_identical_images_with_conflicting_labels_share_a_split(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"cats": 12, "dogs": 12})
    for index in range(12):
        shutil.copy(source / "cats" / f"cats.{index}.jpg", source / "dogs" / f"copy{index}.jpg")
    rows = ingest(tmp_path / "work", source)
    for index in range(12):
        cat, copy = rows[f"cats/cats.{index}.jpg"], rows[f"dogs/copy{index}.jpg"]
        assert cat["split"] == copy["split"] and cat["sha256"] == copy["sha256"]


def test_near_duplicate_grouping_can_be_turned_off(tmp_path: Path) -> None:
    source = pair_source(tmp_path / "src", pairs=8)
    work = tmp_path / "work"
    params = write_params(work, source, validate={"near_duplicate_distance": -1})
    run_ingest(params)
    with open(params.path("split_assignments"), newline="") as handle:
        groups = {row["group"] for row in csv.DictReader(handle)}
    assert len(groups) == 16


def test_a_new_image_bridging_two_splits_is_reported_and_moves_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(7)
    base = rng.sample(range(63), 31)
    zeros = [i for i in range(63) if i not in base]
    # a and b are 8 bits apart (two groups); the bridge is 4 bits from each (<= 4: joins both)
    a = bits_with_ones([*base[2:], *zeros[:2]])
    b = bits_with_ones([*base[:29], *zeros[2:4]])
    source = make_class_folders(tmp_path / "src", {"shapes": 8})
    write_phash_image(source / "shapes" / "a.png", a)
    write_phash_image(source / "shapes" / "b.png", b)
    work = tmp_path / "work"
    first = ingest(work, source)
    chosen = {"shapes/a.png": "train", "shapes/b.png": "test"}  # groups apart, as if by chance
    rewrite_splits(work / "data" / "splits.csv", chosen)
    write_phash_image(source / "shapes" / "bridge.png", bits_with_ones(base))
    with caplog.at_level(logging.WARNING):
        after = ingest(work, source)
    assert {p: after[p]["split"] for p in chosen} == chosen
    assert {p: r["split"] for p, r in after.items() if p in first and p not in chosen} == {
        p: r["split"] for p, r in first.items() if p not in chosen}
    assert after["shapes/bridge.png"]["split"] in ("train", "test")
    assert "Leak across splits" in caplog.text
    assert all(name in caplog.text for name in ("shapes/a.png", "shapes/b.png",
                                                "new: shapes/bridge.png"))


def rewrite_splits(path: Path, splits: dict[str, str]) -> None:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["split"] = splits.get(row["path"], row["split"])
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, SPLIT_ASSIGNMENT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_a_moved_image_keeps_its_split_and_a_removed_one_is_dropped(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"cats": 10})
    before = ingest(tmp_path / "work", source)
    (source / "cats" / "cats.0.jpg").rename(source / "cats" / "renamed.jpg")
    (source / "cats" / "cats.1.jpg").unlink()
    after = ingest(tmp_path / "work", source)
    assert after["cats/renamed.jpg"]["split"] == before["cats/cats.0.jpg"]["split"]
    assert "cats/cats.1.jpg" not in after and len(after) == 9


@pytest.mark.parametrize(("data", "key", "expected"), [
    ({"split_fractions": {"train": 0.8, "validation": 0.1}}, "data.split_fractions",
     "Give exactly train, validation, test"),
    ({"split_fractions": {"train": 0.7, "validation": 0.1, "test": 0.1}},
     "data.split_fractions", "sum to 1"),
    ({"split_fractions": {"train": 0.0, "validation": 0.5, "test": 0.5}},
     "data.split_fractions", "train a share > 0"),
    ({"test_fraction": 1.0}, "data.test_fraction", "held out as test"),
    ({"test_split": "validation"}, "data.test_split", "three different"),
    ({"layout": "tree"}, "data.layout", "auto"),
])
def test_bad_split_params_name_the_key(tmp_path: Path, data: dict, key: str,
                                       expected: str) -> None:
    from warmstart.config.params import ParamsError

    with pytest.raises(ParamsError, match=rf"`{key}`.*{expected}"):
        write_params(tmp_path / "work", make_dataset(tmp_path / "src"), data=data)


def test_a_damaged_assignments_file_is_explained(tmp_path: Path) -> None:
    from warmstart.stages.ingest import IngestError

    source = make_class_folders(tmp_path / "src", {"cats": 3})
    params = write_params(tmp_path / "work", source)
    params.path("split_assignments").parent.mkdir(parents=True)
    params.path("split_assignments").write_text("file,split\na.jpg,train\n")
    with pytest.raises(IngestError, match=r"splits.csv \(paths.split_assignments\) has the "
                       "columns.*delete it to split every image afresh"):
        run_ingest(params)


def test_a_copy_in_two_source_splits_keeps_each_copy_in_its_own_split(tmp_path: Path) -> None:
    """Regression: two groups of the same content in different pools (the source's train/ and
    test/) were merged, and the first path's split moved the other copy."""
    source = make_dataset(tmp_path / "src", per_class={"train": 6, "validation": 6, "test": 6})
    shutil.copy(source / "train" / "cats" / "cats.0.jpg", source / "test" / "cats" / "copy.jpg")
    rows = ingest(tmp_path / "work", source)
    assert rows["train/cats/cats.0.jpg"]["split"] == "train"
    assert rows["test/cats/copy.jpg"]["split"] == "test"
    assert {row["split"] for path, row in rows.items() if path.startswith("train/")} == {"train"}
