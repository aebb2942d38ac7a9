"""Stage `validate`: TFDV statistics + schema; readable failures that name the files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers.images import CLASS_COLOURS, make_dataset, write_image
from tests.helpers.shared import REPO
from warmstart.config.params import ParamsError, load_params, params_from_dict
from warmstart.data.validated import read_validated
from warmstart.stages.ingest import run_ingest
from warmstart.stages.validate import run_validate
from warmstart.validation.findings import ValidationFailed
from warmstart.validation.phash import hamming, near_pairs, phash
from warmstart.validation.schema import propose_schema, schema_diff, write_schema
from warmstart.validation.table import bounded_map, sniff_format


def ingest(work: Path):
    params = load_params(work / "params.yaml")
    run_ingest(params)
    return params


def test_clean_dataset_passes(workspace: Callable[..., Path], dataset: Path) -> None:
    params = ingest(workspace(dataset))
    run_validate(params)
    table, classes = read_validated(params.path("validated"))
    assert classes == ["cats", "dogs"]
    assert len(table) == 36 and set(table["decodable"]) == {1}
    assert set(table["format"]) == {"jpeg"} and set(table["mode"]) == {"RGB"}
    assert set(table["quarantined"]) == {0} and table["sha256"].str.len().eq(64).all()
    assert table["phash"].str.len().eq(16).all() and (table["contrast"] > 2).all()
    report = json.loads((params.path("validation_report") / "anomalies.json").read_text())
    assert report["ok"] is True and report["problems"] == []
    assert report["drift_skew"]["train"]["label"]["skew"]["type"] == "L_INFTY"
    assert (params.path("validation_report") / "stats_train.pb").stat().st_size > 0
    assert (params.path("validation_baseline") / "stats_validation.pb").is_file()
    metrics = json.loads(params.path("validate_metrics").read_text())
    assert metrics["images"] == 36 and metrics["quarantined"] == 0
    html = params.path("validation_html").read_text()
    assert "TFDV statistics" in html and "PASSED" in html


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
    assert "[validation] label" in message  # outside the schema's label domain


def test_file_outside_class_folder_and_missing_class(workspace: Callable[..., Path],
                                                     tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src")
    write_image(source / "train" / "loose.jpg", (1, 2, 3), (40, 40), seed=1)
    for path in (source / "validation" / "dogs").iterdir():
        path.unlink()
    params = ingest(workspace(source))
    with pytest.raises(ValidationFailed) as caught:
        run_validate(params)
    assert "train/loose.jpg" in str(caught.value)
    assert "class 'dogs' has no usable images in 'validation'" in str(caught.value)


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
    report = json.loads((params.path("validation_report") / "anomalies.json").read_text())
    [problem] = report["problems"]
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
                                            ("near_duplicate_distance", 65)])
def test_bad_validate_params_are_refused(tmp_path: Path, key: str, value: object) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["source"] = str(tmp_path)
    raw["validate"][key] = value
    with pytest.raises(ParamsError, match=f"validate.{key}"):
        params_from_dict(raw, root=tmp_path)
