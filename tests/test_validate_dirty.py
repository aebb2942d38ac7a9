"""A dirty dataset with every fault validation must catch: reported under `fail`, quarantined
under `quarantine` (training then proceeds on the clean rest)."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.images import make_dataset, write_image
from tests.helpers.project import DEFAULT_PER_CLASS
from warmstart.config.params import Params, load_params
from warmstart.data.records import Manifest
from warmstart.data.validated import read_validated
from warmstart.layout import SPLITS
from warmstart.stages.features import run_features
from warmstart.stages.preprocess import run_preprocess
from warmstart.stages.transfer import run_transfer
from warmstart.stages.validate import run_validate
from warmstart.validation.findings import ValidationFailed

#: file (relative to the raw folder) -> words its reason must contain. Every file here is bad.
BAD_FILES = {
    "train/cats/truncated.jpg": "training decoder failed",
    "train/dogs/empty.jpg": "empty file",
    "train/cats/text.jpg": "not a readable image",
    "train/dogs/png_named.jpg": "content is PNG but the name ends in .jpg",
    "train/cats/grey.jpg": "mode 'L'",
    "train/dogs/cmyk.jpg": "mode 'CMYK'",
    "train/cats/rgba.png": "mode 'RGBA'",
    "train/dogs/deep.png": "mode 'I;16'",
    "train/cats/tiny.jpg": "1x1 pixels",
    "train/dogs/bomb.png": "decompression bomb",
    "validation/dogs/copy.jpg": "duplicate of train/dogs/dogs.0.jpg",
    "validation/cats/scene_small.jpg": "near-duplicate of train/cats/scene.jpg",
    "validation/horses/h.jpg": "class 'horses'",
    "train/cats/link.jpg": "symlink",
}
EMPTY_CLASS_FOLDER = "train/birds/"
#: Overrides: lenient enough that only the planted faults matter.
LENIENT = {"max_quarantine_fraction": 0.5}


def png_header_bomb(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def scene(size: tuple[int, int]) -> Image.Image:
    """A smooth, structured picture (its resized copies keep the same perceptual hash)."""
    y, x = np.mgrid[0:120, 0:160]
    pixels = np.stack([x * 1.5, y * 2.0, 255 - x - y / 2], axis=-1)
    pixels[30:80, 40:100] = (250, 240, 30)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").resize(size)


def make_dirty(raw: Path, outside: Path) -> Path:
    """A clean tiny dataset at ``raw`` (train, validation, test) plus one file (or folder) per
    fault."""
    make_dataset(raw, per_class=DEFAULT_PER_CLASS)
    rng = np.random.default_rng(7)

    def noise() -> Image.Image:  # a different picture per file: no accidental near-duplicates
        return Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8), "RGB")

    good = (raw / "train" / "cats" / "cats.0.jpg").read_bytes()
    (raw / "train/cats/truncated.jpg").write_bytes(good[: len(good) * 4 // 5])  # header kept
    (raw / "train/dogs/empty.jpg").write_bytes(b"")
    (raw / "train/cats/text.jpg").write_text("this is a text file, not a photo\n")
    noise().save(raw / "train/dogs/png_named.jpg", "PNG")
    noise().convert("L").save(raw / "train/cats/grey.jpg", "JPEG")
    noise().convert("CMYK").save(raw / "train/dogs/cmyk.jpg", "JPEG")
    noise().convert("RGBA").save(raw / "train/cats/rgba.png")
    deep = rng.integers(0, 65535, (48, 56)).astype(np.uint16)
    Image.fromarray(deep).save(raw / "train/dogs/deep.png")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(raw / "train/cats/tiny.jpg")
    png_header_bomb(raw / "train/dogs/bomb.png", 20000, 20000)
    (raw / "validation/dogs/copy.jpg").write_bytes((raw / "train/dogs/dogs.0.jpg").read_bytes())
    scene((160, 120)).save(raw / "train/cats/scene.jpg", quality=95)
    scene((112, 84)).save(raw / "validation/cats/scene_small.jpg", quality=80)
    write_image(raw / "validation/horses/h.jpg", (90, 90, 90), (48, 48), seed=99)
    (raw / EMPTY_CLASS_FOLDER).mkdir()
    write_image(outside, (1, 2, 3), (48, 48), seed=5)
    (raw / "train/cats/link.jpg").symlink_to(outside)
    return raw


@pytest.fixture
def dirty(workspace: Callable[..., Path], tmp_path: Path) -> Callable[..., Params]:
    """Params of a workspace whose raw folder is the dirty dataset (built in place: ingest
    itself refuses symlinks, so validate's own symlink check is exercised here)."""

    def make(**validate: object) -> Params:
        work = workspace(tmp_path / "unused-source", validate={**LENIENT, **validate})
        (tmp_path / "unused-source").mkdir(exist_ok=True)
        params = load_params(work / "params.yaml")
        make_dirty(params.path("raw"), tmp_path / "outside" / "secret.jpg")
        return params

    return make


def reasons_by_file(report: dict) -> dict[str, str]:
    """file -> all that the report says about it (problem reasons and per-file reasons)."""
    said: dict[str, str] = {}
    for problem in report["problems"]:
        for path in problem["files"]:
            said[path] = said.get(path, "") + " | " + problem["check"] + ": " + \
                problem["reason"] + " " + problem["quarantine"].get(path, "")
    return said


def test_fail_policy_reports_every_fault_with_file_and_reason(dirty) -> None:
    params = dirty(policy="fail")
    with pytest.raises(ValidationFailed) as caught:
        run_validate(params)
    message = str(caught.value)
    report = json.loads((params.path("validation_report") / "anomalies.json").read_text())
    said = reasons_by_file(report)
    for path, reason in BAD_FILES.items():
        assert path in message, f"{path} missing from the failure message"
        assert reason in said.get(path, ""), f"{path}: expected {reason!r}, got {said.get(path)}"
    assert EMPTY_CLASS_FOLDER in message and "holds no files" in message
    assert "[train] decodable" in message  # TFDV's own anomaly over the whole table
    assert not params.path("validated").exists()  # nothing for preprocess to consume
    assert not params.path("validation_baseline").exists()  # a failed version is no baseline
    assert params.path("raw").joinpath("train/cats/link.jpg").is_symlink()  # raw untouched
    html = params.path("validation_html").read_text()
    assert "data:image/jpeg;base64," in html and "train/dogs/bomb.png" in html


def test_quarantine_policy_trains_on_the_clean_rest(dirty) -> None:
    params = dirty(policy="quarantine")
    raw_before = sorted(p.name for p in params.path("raw").rglob("*"))
    run_validate(params)
    manifest = json.loads((params.path("validation_report") / "quarantine.json").read_text())
    assert {entry["path"] for entry in manifest} == set(BAD_FILES)
    for entry in manifest:
        assert any(BAD_FILES[entry["path"]] in reason for reason in entry["reasons"])
    table, classes = read_validated(params.path("validated"))
    assert classes == ["cats", "dogs"]
    assert set(table.loc[table["quarantined"] == 1, "path"]) == set(BAD_FILES)
    metrics = json.loads(params.path("validate_metrics").read_text())
    assert metrics["quarantined"] == len(BAD_FILES) and metrics["ok"] is True
    assert metrics["trained_on"] == len(table) - len(BAD_FILES)
    assert sorted(p.name for p in params.path("raw").rglob("*")) == raw_before

    run_preprocess(params)
    processed = Manifest.read(params.path("processed"))
    clean = table[table["quarantined"] == 0]
    for split in SPLITS:
        assert processed.count(split) == int((clean["split"] == split).sum())
    run_features(params)
    run_transfer(params)
    assert json.loads(params.path("transfer_metrics").read_text())


def test_quarantine_fails_when_too_many_files_are_bad(dirty) -> None:
    params = dirty(policy="quarantine", max_quarantine_fraction=0.05)
    with pytest.raises(ValidationFailed, match="too many bad files"):
        run_validate(params)
