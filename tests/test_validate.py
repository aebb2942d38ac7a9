"""Stage `validate`: TFDV statistics + schema over train, validation and test; readable failures
that name the files; class rules of any dataset (no class names in defaults); warnings."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers.images import CLASS_COLOURS, make_dataset, write_image
from tests.helpers.project import DEFAULT_PER_CLASS
from tests.helpers.shared import REPO
from warmstart.config.params import ParamsError, load_params, params_from_dict
from warmstart.data.validated import read_validated
from warmstart.layout import SPLITS
from warmstart.stages.ingest import run_ingest
from warmstart.stages.validate import run_validate
from warmstart.validation.checks import label_domain
from warmstart.validation.findings import ValidationFailed
from warmstart.validation.phash import hamming, near_pairs, phash
from warmstart.validation.schema import load_schema, propose_schema, schema_diff, write_schema
from warmstart.validation.table import bounded_map, sniff_format


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """The tiny two-class dataset with all three split folders (train 12, validation 6, test 6
    per class)."""
    return make_dataset(tmp_path / "source", per_class=DEFAULT_PER_CLASS)


def ingest(work: Path):
    params = load_params(work / "params.yaml")
    run_ingest(params)
    return params


def anomalies_report(params) -> dict:
    return json.loads((params.path("validation_report") / "anomalies.json").read_text())


def test_clean_dataset_passes(workspace: Callable[..., Path], dataset: Path) -> None:
    params = ingest(workspace(dataset))
    run_validate(params)
    table, classes = read_validated(params.path("validated"))
    assert classes == ["cats", "dogs"]
    assert len(table) == 48 and set(table["decodable"]) == {1}
    assert table.groupby("split").size().to_dict() == {"train": 24, "validation": 12, "test": 12}
    assert set(table["orientation"]) == {1}
    assert set(table["format"]) == {"jpeg"} and set(table["mode"]) == {"RGB"}
    assert set(table["quarantined"]) == {0} and table["sha256"].str.len().eq(64).all()
    assert table["phash"].str.len().eq(16).all() and (table["contrast"] > 2).all()
    report = json.loads((params.path("validation_report") / "anomalies.json").read_text())
    assert report["ok"] is True and report["problems"] == []
    for split in ("validation", "test"):  # skew: each against train
        assert report["drift_skew"][split]["label"]["skew"]["type"] == "L_INFTY"
    for split in SPLITS:
        assert (params.path("validation_report") / f"stats_{split}.pb").stat().st_size > 0
        assert (params.path("validation_baseline") / f"stats_{split}.pb").is_file()
    metrics = json.loads(params.path("validate_metrics").read_text())
    assert metrics["images"] == 48 and metrics["quarantined"] == 0
    assert metrics["images_per_split"] == {"train": 24, "validation": 12, "test": 12}
    assert metrics["warnings"] == 0
    details = json.loads(params.path("validate_details").read_text())
    assert details["class_balance"]["test"]["ratio"] == 1.0 and details["seconds"] > 0
    # metrics hold what two equal runs share; timings and per-class detail are details only
    assert "seconds" not in metrics and "class_balance" not in metrics
    assert metrics == {k: details[k] for k in metrics}
    html = params.path("validation_html").read_text()
    assert "TFDV statistics" in html and "PASSED" in html
    assert "<td>test</td>" in html and "class ratio 1" in html
    facets = (params.path("validation_report") / "facets.html").read_text()
    assert "facets-overview" in facets


def test_undecodable_file_fails_naming_it(workspace: Callable[..., Path], dataset: Path) -> None:
    (dataset / "train" / "cats" / "broken.jpg").write_bytes(b"this is not a jpeg")
    truncated = dataset / "validation" / "dogs" / "truncated.jpg"
    good = (dataset / "validation" / "dogs" / "dogs.0.jpg").read_bytes()
    truncated.write_bytes(good[: len(good) // 3])
    params = ingest(workspace(dataset))
    with pytest.raises(ValidationFailed) as caught:
        run_validate(params)
    message = str(caught.value)
    assert "train/cats/broken.jpg" in message and "not a readable image" in message
    assert "validation/dogs/truncated.jpg" in message
    assert "[train] decodable" in message  # the TFDV anomaly itself
    report = json.loads((params.path("validation_report") / "anomalies.json").read_text())
    assert report["ok"] is False and "decodable" in report["tfdv_anomalies"]["train"]
    assert not params.path("validated").exists()  # nothing for preprocess to consume


def test_unknown_class_fails_naming_it(workspace: Callable[..., Path], dataset: Path) -> None:
    write_image(dataset / "validation" / "horses" / "h.jpg", (90, 90, 90), (48, 48), seed=9)
    params = ingest(workspace(dataset))
    with pytest.raises(ValidationFailed) as caught:
        run_validate(params)
    message = str(caught.value)
    assert "unknown class" in message and "validation/horses/h.jpg" in message
    # The committed schema names no classes: train's classes are the rule.
    assert "class 'horses' in 'validation' has no images in 'train'" in message


def test_committed_schema_names_no_classes_and_fits_ten_classes(
        workspace: Callable[..., Path], tmp_path: Path) -> None:
    schema = load_schema(REPO / "schema" / "schema.pbtxt")
    assert label_domain(schema) is None and "cats" not in (REPO / "schema" / "schema.pbtxt"
                                                           ).read_text()
    source = tmp_path / "ten"
    for index in range(10):
        for split, count in (("train", 4), ("validation", 2), ("test", 2)):
            for n in range(count):
                colour = (25 * index, 255 - 25 * index, (90 * index + 40 * n) % 256)
                write_image(source / split / f"class_{index}" / f"{n}.jpg", colour,
                            (40 + n, 44 + index), seed=100 * index + 10 * n + len(split))
    params = ingest(workspace(source))
    run_validate(params)
    assert read_validated(params.path("validated"))[1] == [f"class_{i}" for i in range(10)]


def test_too_few_images_of_a_class_fails_naming_class_split_count_and_fix(
        workspace: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", per_class=DEFAULT_PER_CLASS)
    for path in sorted((source / "test" / "dogs").iterdir())[2:]:
        path.unlink()
    params = ingest(workspace(source, validate={"min_images_per_class": 5}))
    with pytest.raises(ValidationFailed) as caught:
        run_validate(params)
    message = str(caught.value)
    assert ("class 'dogs' has 2 usable image(s) in 'test', below "
            "validate.min_images_per_class=5") in message
    assert "Add images of 'dogs', merge it with a related class, or lower" in message
    assert "class 'cats'" not in message  # 6 images everywhere: enough


def test_class_imbalance_is_a_reported_warning(workspace: Callable[..., Path],
                                               tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", per_class={"train": 3, "validation": 2, "test": 2})
    for split, count in (("train", 21), ("validation", 14), ("test", 14)):
        for n in range(count):
            write_image(source / split / "cats" / f"more.{n}.jpg", CLASS_COLOURS["cats"],
                        (48, 40 + n), seed=1000 + 100 * len(split) + n)
    params = ingest(workspace(source))
    run_validate(params)  # 8:1 is information, not a failure
    problems = anomalies_report(params)["problems"]  # one per split
    assert [(p["check"], p["advisory"]) for p in problems] == [("class imbalance", True)] * 3
    assert "'train': the largest class 'cats' (24 images) is 8 times the smallest 'dogs'" in \
        problems[0]["reason"]
    metrics = json.loads(params.path("validate_details").read_text())
    assert metrics["class_balance"]["train"] == {
        "ratio": 8.0, "smallest_class": "dogs", "smallest_count": 3, "largest_class": "cats",
        "largest_count": 24}
    assert metrics["ok"] is True and metrics["warnings"] == 3  # one per split
    assert "class ratio 8 (smallest: dogs, 3 images)" in params.path("validation_html").read_text()


def test_exif_orientation_is_a_warning_naming_the_files(workspace: Callable[..., Path],
                                                        dataset: Path, tmp_path: Path) -> None:
    photo = write_image(tmp_path / "photo.jpg", CLASS_COLOURS["cats"], (56, 42), seed=777)
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: stored sideways, shown turned 90° clockwise
    Image.open(photo).save(dataset / "train" / "cats" / "phone.jpg", exif=exif)
    params = ingest(workspace(dataset))
    run_validate(params)
    [problem] = anomalies_report(params)["problems"]
    assert problem["check"] == "EXIF orientation" and problem["advisory"] is True
    assert problem["files"] == ["train/cats/phone.jpg"] and problem["quarantine"] == {}
    assert problem["details"] == {"train/cats/phone.jpg": "EXIF Orientation 6 (rotated 90° "
                                  "clockwise)"}
    assert "pixels as stored" in problem["reason"]
    table, _ = read_validated(params.path("validated"))
    assert table.set_index("path").loc["train/cats/phone.jpg", "orientation"] == 6
    assert json.loads(params.path("validate_metrics").read_text())["exif_rotated"] == 1


def test_file_outside_class_folder_and_missing_class(workspace: Callable[..., Path],
                                                     tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", per_class=DEFAULT_PER_CLASS)
    for path in (source / "validation" / "dogs").iterdir():
        path.unlink()
    params = ingest(workspace(source))
    # Written after ingest (which leaves loose files out): validate checks whatever raw holds.
    write_image(params.path("raw") / "train" / "loose.jpg", (1, 2, 3), (40, 40), seed=1)
    with pytest.raises(ValidationFailed) as caught:
        run_validate(params)
    assert "train/loose.jpg" in str(caught.value)
    assert "class 'dogs' has no usable images in 'validation'" in str(caught.value)


def test_a_raw_folder_without_a_test_split_fails_saying_so(workspace: Callable[..., Path],
                                                          dataset: Path) -> None:
    params = ingest(workspace(dataset))
    shutil.rmtree(params.path("raw") / "test")
    with pytest.raises(ValidationFailed) as caught:
        run_validate(params)
    assert "empty split: split 'test' has no usable images" in str(caught.value)
    assert "missing class" not in str(caught.value)  # one line, not one per class


def test_missing_schema_says_how_to_make_one(workspace: Callable[..., Path],
                                             dataset: Path) -> None:
    params = ingest(workspace(dataset, schema=None))
    with pytest.raises(ValidationFailed, match="warmstart schema --write"):
        run_validate(params)


def test_schema_proposal_for_three_classes(workspace: Callable[..., Path],
                                           tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", classes=tuple(CLASS_COLOURS))
    params = ingest(workspace(source, schema=None))
    proposal = propose_schema(params.path("raw"), params.data.train_split, params.validate)
    assert "+  value: \"birds\"" in schema_diff(params.path("schema"), proposal)
    write_schema(params.path("schema"), proposal)
    assert schema_diff(params.path("schema"), proposal) == ""
    run_validate(params)
    assert read_validated(params.path("validated"))[1] == ["birds", "cats", "dogs"]


def test_duplicate_within_a_split_is_a_warning(workspace: Callable[..., Path],
                                               dataset: Path) -> None:
    copy = dataset / "train" / "cats" / "copy.jpg"
    copy.write_bytes((dataset / "train" / "cats" / "cats.0.jpg").read_bytes())
    params = ingest(workspace(dataset))
    run_validate(params)  # passes under `fail`: it weights one image twice, leaks nothing
    [problem] = anomalies_report(params)["problems"]
    assert problem["check"] == "duplicate within a split" and problem["advisory"] is True
    assert problem["quarantine"] == {"train/cats/copy.jpg": problem["quarantine"][
        "train/cats/copy.jpg"]} and "duplicate of train/cats/cats.0.jpg" in problem[
        "quarantine"]["train/cats/copy.jpg"]


def test_near_pairs_finds_exactly_the_close_hashes() -> None:
    rng = np.random.default_rng(3)
    values = [int(v) for v in rng.integers(0, 2**63, 300, dtype=np.int64)]
    values += [values[0] ^ 0b1011, values[1] ^ (1 << 63), values[2]]  # distances 3, 1, 0
    hashes = [f"{v:016x}" for v in values]
    for distance in (0, 3, 6):
        brute = sorted((i, j, hamming(hashes[i], hashes[j]))
                       for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                       if hamming(hashes[i], hashes[j]) <= distance)
        assert near_pairs(hashes, distance) == brute
    assert near_pairs(hashes, -1) == []


def test_near_pairs_memory_does_not_grow_with_the_candidate_pairs() -> None:
    """20,000 distinct photos share band values in about 400,000 pairs: the search held them
    all as a set (35 MiB here, about 670 MiB at 100,000 images); now one bucket at a time."""
    rng = np.random.default_rng(5)
    values = [int(v) for v in rng.integers(0, 2**63, 20_000, dtype=np.int64)]
    values += [values[7] ^ 0b101, values[9]]  # two planted near-duplicates: distances 2 and 0
    hashes = [f"{v:016x}" for v in values]
    tracemalloc.start()
    try:
        found = near_pairs(hashes, 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(i, j, d) for i, j, d in found if j >= 20_000] == [(7, 20_000, 2), (9, 20_001, 0)]
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_phash_survives_resizing_not_different_pictures() -> None:
    y, x = np.mgrid[0:120, 0:160]
    picture = Image.fromarray(((x * 1.5 + y) % 256).astype(np.uint8), "L")
    other = Image.fromarray(((x * y) % 256).astype(np.uint8), "L")
    assert hamming(phash(picture), phash(picture.resize((96, 72)))) <= 2
    assert hamming(phash(picture), phash(other)) > 10


def test_sniff_format_by_content() -> None:
    assert sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_format(b"GIF89a") == "gif" and sniff_format(b"BM..") == "bmp"
    assert sniff_format(b"hello") == "other" and sniff_format(b"") == "other"


def test_bounded_map_keeps_order_and_bounds_work_in_flight() -> None:
    started: list[int] = []
    results = bounded_map(lambda i: started.append(i) or i * i, iter(range(50)), workers=2,
                          in_flight=4)
    first = next(results)
    assert first == 0 and len(started) <= 4  # nothing beyond the window was submitted
    assert [first, *results] == [i * i for i in range(50)]


@pytest.mark.parametrize(("key", "value"), [("policy", "ignore"),
                                            ("beam_options", "DirectRunner"),
                                            ("max_quarantine_fraction", 1.5),
                                            ("near_duplicate_distance", 65),
                                            ("min_images_per_class", 0),
                                            ("warn_class_ratio", 0.5),
                                            ("noise_samples", 0),
                                            ("drift_blocking", ["label", "colour"])])
def test_bad_validate_params_are_refused(tmp_path: Path, key: str, value: object) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["source"] = str(tmp_path)
    raw["validate"][key] = value
    with pytest.raises(ParamsError, match=f"validate.{key}"):
        params_from_dict(raw, root=tmp_path)
