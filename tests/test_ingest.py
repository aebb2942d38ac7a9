"""Stage `ingest`: folder, zip and http(s) sources in the layouts people have (split folders with
or without test, `val/`, class folders, a CSV, one folder down in a zip); junk skipped; errors
that name the user's source and the param to set; refusals that keep the workspace safe."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import logging
import os
import shutil
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.files import folder_bytes
from tests.helpers.images import make_dataset
from tests.helpers.project import write_params
from tests.helpers.sources import make_class_folders, write_csv, zip_tree
from warmstart.config.params import Params
from warmstart.layout import SPLITS
from warmstart.stages.ingest import IngestError, download, run_ingest


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Split folders with all three splits: ingest copies them as they are."""
    return make_dataset(tmp_path / "source", per_class={"train": 12, "validation": 6, "test": 3})


def params_for(work: Path, source: Path | str, **data: object):
    return write_params(work, source, data=data)


def zip_folder(folder: Path, archive: Path, prefix: str = "cats_and_dogs_filtered") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, f"{prefix}/{path.relative_to(folder).as_posix()}")
        zf.writestr(f"{prefix}/vectorize.py", "print('not data')\n")
    return archive


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_folder_source_is_copied_and_left_untouched(tmp_path: Path, dataset: Path) -> None:
    before = tree(dataset)
    raw = run_ingest(params_for(tmp_path / "work", dataset))
    assert tree(raw) == before
    assert tree(dataset) == before


def test_zip_with_top_folder_is_extracted_to_the_split_layout(tmp_path: Path,
                                                              dataset: Path) -> None:
    archive = zip_folder(dataset, tmp_path / "data.zip")
    raw = run_ingest(params_for(tmp_path / "work", archive))
    assert tree(raw) == tree(dataset)  # vectorize.py beside the splits is not data
    assert not [p for p in raw.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_sha256_is_verified(tmp_path: Path, dataset: Path) -> None:
    archive = zip_folder(dataset, tmp_path / "data.zip")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    run_ingest(params_for(tmp_path / "work", archive, sha256=digest))
    with pytest.raises(IngestError, match=f"Checksum mismatch.*expected sha256 {'0' * 64}"):
        run_ingest(params_for(tmp_path / "work", archive, sha256="0" * 64))


def test_zip_slip_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/cats/ok.jpg", b"x")
        zf.writestr("../../escaped.txt", b"pwned")
    with pytest.raises(IngestError, match="outside the extraction folder.*zip-slip"):
        run_ingest(params_for(tmp_path / "work", archive))
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "work" / "data" / "raw").exists()


def test_symlink_in_zip_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("train/cats/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(IngestError, match="is a symlink"):
        run_ingest(params_for(tmp_path / "work", archive))


def test_zip_bomb_limit(tmp_path: Path, dataset: Path) -> None:
    archive = zip_folder(dataset, tmp_path / "data.zip")
    with pytest.raises(IngestError, match="max_extract_bytes"):
        run_ingest(params_for(tmp_path / "work", archive, max_extract_bytes=100))


def test_symlink_in_folder_source_is_refused(tmp_path: Path, dataset: Path) -> None:
    os.symlink("/etc/hostname", dataset / "train" / "cats" / "outside.jpg")
    with pytest.raises(IngestError, match="outside.jpg is a symlink"):
        run_ingest(params_for(tmp_path / "work", dataset))


def test_missing_split_folders_are_explained(tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", per_class={"train": 2, "holdout": 1})
    with pytest.raises(IngestError, match="no train/ and validation/ folders.*validation_split"
                       ) as error:
        run_ingest(params_for(tmp_path / "work", source))
    assert str(source) in str(error.value) and "data.layout" in str(error.value)


def test_a_failed_ingest_keeps_the_previous_output(tmp_path: Path, dataset: Path) -> None:
    work = tmp_path / "work"
    raw = run_ingest(params_for(work, dataset))
    before = tree(raw)
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../x", b"x")
    with pytest.raises(IngestError):
        run_ingest(params_for(work, archive))
    assert tree(raw) == before


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    thread.join(timeout=5)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_url_source_is_downloaded_verified_and_extracted(tmp_path: Path, dataset: Path,
                                                         http_server: tuple[str, Path]) -> None:
    url, served = http_server
    archive = zip_folder(dataset, served / "cats_and_dogs_filtered.zip")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    params = params_for(tmp_path / "work", f"{url}/cats_and_dogs_filtered.zip", sha256=digest)
    raw = run_ingest(params)
    assert tree(raw) == tree(dataset)
    assert (params.path("downloads") / "cats_and_dogs_filtered.zip").is_file()


def test_download_with_bad_checksum_leaves_no_file(tmp_path: Path,
                                                   http_server: tuple[str, Path]) -> None:
    url, served = http_server
    (served / "data.zip").write_bytes(b"not the archive you pinned")
    target = tmp_path / "downloads" / "data.zip"
    with pytest.raises(IngestError, match="Checksum mismatch"):
        download(f"{url}/data.zip", target, "0" * 64, max_bytes=10_000)
    assert list(target.parent.iterdir()) == []


def test_download_size_limit(tmp_path: Path, http_server: tuple[str, Path]) -> None:
    url, served = http_server
    (served / "big.zip").write_bytes(b"x" * 5000)
    with pytest.raises(IngestError, match="max_download_bytes"):
        download(f"{url}/big.zip", tmp_path / "big.zip", None, max_bytes=1000)
    assert not (tmp_path / "big.zip").exists()


def test_download_refuses_other_schemes(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="only http"):
        download("file:///etc/passwd", tmp_path / "x.zip", None, max_bytes=10)


# --- Layouts ------------------------------------------------------------------------------------


def names(raw: Path, split: str) -> dict[str, set[str]]:
    """class -> file names in one split of ``raw``."""
    return {c.name: {f.name for f in c.iterdir()} for c in sorted((raw / split).iterdir())}


def test_split_folders_without_test_hold_out_part_of_each_validation_class(
        tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", per_class={"train": 12, "validation": 10})
    raw = run_ingest(params_for(tmp_path / "work", source))
    assert sorted(p.name for p in raw.iterdir()) == sorted(SPLITS)
    assert names(raw, "train") == names(source, "train")
    held_out = names(raw, "test")
    for label, files in names(source, "validation").items():
        assert len(held_out[label]) == 2  # data.test_fraction 0.2 of 10, per class
        assert names(raw, "validation")[label] | held_out[label] == files
        assert not names(raw, "validation")[label] & held_out[label]


def test_val_folder_is_taken_as_the_validation_split(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    source = make_dataset(tmp_path / "src", per_class={"train": 4, "val": 5})
    with caplog.at_level(logging.INFO):
        raw = run_ingest(params_for(tmp_path / "work", source))
    assert "using val/ as the validation split" in caplog.text
    assert {label: len(files) for label, files in names(raw, "validation").items()} == {
        "cats": 4, "dogs": 4}
    assert sum(len(f) for f in names(raw, "test").values()) == 2


def test_class_folders_are_split_per_class_by_the_fractions(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"cats": 20, "dogs": 10})
    raw = run_ingest(params_for(tmp_path / "work", source))
    shares = {split: {c: len(f) for c, f in names(raw, split).items()} for split in SPLITS}
    assert shares == {"train": {"cats": 16, "dogs": 8}, "validation": {"cats": 2, "dogs": 1},
                      "test": {"cats": 2, "dogs": 1}}


def ingest_counts(params: Params) -> tuple[int, int]:
    found = json.loads(params.path("ingest_details").read_text())
    return found["computed_images"], found["reused_images"]


def test_a_grown_folder_is_phashed_only_for_its_new_files(tmp_path: Path) -> None:
    """The pHashes (a decode each: most of ingest's time) come from the per-image store; the
    splits and files are those of an ingest without it."""
    source = make_class_folders(tmp_path / "src", {"cats": 20, "dogs": 10})
    params = params_for(tmp_path / "work", source)
    run_ingest(params)
    assert ingest_counts(params) == (30, 0)
    make_class_folders(source, {"cats": 2, "dogs": 1}, first_seed=500)
    without_store = tmp_path / "without_store"
    shutil.copytree(tmp_path / "work", without_store)
    run_ingest(params)
    assert ingest_counts(params) == (3, 30)
    cold = write_params(without_store, source, store={"enabled": False})
    run_ingest(cold)
    assert ingest_counts(cold) == (33, 0)
    assert folder_bytes(params.path("raw")) == folder_bytes(cold.path("raw"))
    assert (params.path("split_assignments").read_bytes()
            == cold.path("split_assignments").read_bytes())


def test_a_changed_decode_limit_phashes_again(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"cats": 6, "dogs": 6})
    run_ingest(params_for(tmp_path / "work", source))
    params = write_params(tmp_path / "work", source, validate={"max_image_pixels": 10**7})
    run_ingest(params)
    assert ingest_counts(params) == (12, 0)
    run_ingest(params)
    assert ingest_counts(params) == (0, 12)


@pytest.mark.parametrize("layout", ["auto", "class_folders"])
def test_class_folders_one_level_down_in_a_zip_with_junk(tmp_path: Path, layout: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    source = make_class_folders(tmp_path / "src", {"daisy": 5, "roses": 5})
    junk = {"flowers/LICENSE.txt": b"CC-BY", "__MACOSX/flowers/._daisy": b"x",
            "flowers/daisy/._daisy.0.jpg": b"x", "flowers/.DS_Store": b"x",
            "flowers/roses/notes.txt": b"not an image"}
    archive = zip_tree(source, tmp_path / "flowers.zip", prefix="flowers", extra=junk)
    with caplog.at_level(logging.INFO):
        raw = run_ingest(params_for(tmp_path / "work", archive, layout=layout))
    assert sorted(p.name for p in (raw / "train").iterdir()) == ["daisy", "roses"]
    found = {f.name for f in raw.rglob("*") if f.is_file()}
    assert found == {f.name for f in source.rglob("*.jpg")}
    assert "LICENSE.txt" in caplog.text and "flowers/roses/notes.txt" in caplog.text
    assert "class_folders layout in flowers/" in caplog.text


def test_split_folders_one_level_down_in_a_zip_with_val_and_test(tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", per_class={"train": 3, "val": 2, "test": 2})
    raw = run_ingest(params_for(tmp_path / "work", zip_tree(source, tmp_path / "d.zip",
                                                            prefix="mydata")))
    assert names(raw, "validation") == names(source, "val")  # a test split: nothing held out
    assert names(raw, "test") == names(source, "test")


def test_csv_with_a_split_column(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src" / "images", {"cats": 3, "dogs": 3})
    rows = [(f"images/{label}/{label}.{i}.jpg", label.upper(), split)
            for label in ("cats", "dogs") for i, split in enumerate(("train", "validation",
                                                                     "test"))]
    write_csv(source.parent / "labels.csv", rows)
    raw = run_ingest(params_for(tmp_path / "work", source.parent))
    for split, index in (("train", 0), ("validation", 1), ("test", 2)):
        assert names(raw, split) == {"CATS": {f"cats.{index}.jpg"}, "DOGS": {f"dogs.{index}.jpg"}}


def test_csv_without_a_split_column_is_split_like_class_folders(tmp_path: Path) -> None:
    source = make_class_folders(tmp_path / "src", {"a": 10, "b": 10})
    rows = [(f.relative_to(source).as_posix(), f.parent.name) for f in source.rglob("*.jpg")]
    write_csv(source / "tags.csv", rows, header=("path", "label"))
    raw = run_ingest(params_for(tmp_path / "work", source, layout="csv", csv="tags.csv"))
    assert {s: sum(len(f) for f in names(raw, s).values()) for s in SPLITS} == {
        "train": 16, "validation": 2, "test": 2}


def test_an_empty_split_folder_class_is_not_created(tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", per_class={"train": 2, "validation": 2})
    (source / "train" / "empty").mkdir()
    raw = run_ingest(params_for(tmp_path / "work", source))
    assert not (raw / "train" / "empty").exists()


# --- Errors name the user's source, the layout expected and the param to set --------------------


def nothing_recognisable(tmp_path: Path) -> Path:
    (tmp_path / "x").mkdir()
    return zip_tree(tmp_path / "x", tmp_path / "photos.zip",
                    extra={"docs/readme.txt": b"hello", "pics/a.webp": b"RIFF"})


def only_a_text_file(tmp_path: Path) -> Path:
    (tmp_path / "s" / "notes").mkdir(parents=True)
    (tmp_path / "s" / "notes" / "readme.txt").write_text("no images")
    return tmp_path / "s"


@pytest.mark.parametrize(("make", "data", "expected"), [
    (nothing_recognisable, {}, r"has no train/ and validation/ folders.*no class folders with "
     r"images and no labels.csv.*found there: docs/, pics/.*data.layout"),
    (lambda p: make_class_folders(p / "s", {"a": 2}), {"layout": "split_folders"},
     r"has no train/ and validation/ folders.*data.layout is split_folders.*data.train_split"),
    (lambda p: make_dataset(p / "s"), {"layout": "csv"},
     r"has no labels.csv.*data.layout is csv.*data.csv"),
    (only_a_text_file, {"layout": "class_folders"},
     r"has no class folders with images.*data.layout"),
])
def test_layout_errors_name_the_source_and_the_param(tmp_path: Path, make, data: dict,
                                                     expected: str) -> None:
    source = make(tmp_path)
    with pytest.raises(IngestError, match=expected) as error:
        run_ingest(params_for(tmp_path / "work", source, **data))
    assert str(error.value).startswith(str(source))
    assert "_extracted" not in str(error.value) and ".raw." not in str(error.value)


def test_split_folder_without_class_folders_is_explained(tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", classes=("cats",),
                          per_class={"train": 1, "validation": 1})
    for image in (source / "train" / "cats").iterdir():
        image.rename(source / "train" / image.name)
    archive = zip_tree(source, tmp_path / "flat.zip")
    with pytest.raises(IngestError, match=r"flat.zip: split folder train/ has no class folders "
                       r"with images.*data.layout"):
        run_ingest(params_for(tmp_path / "work", archive))


@pytest.mark.parametrize(("rows", "header", "expected"), [
    ([("a/a.0.jpg", "a")], ("file", "class"), r"labels.csv has the header file,class; expected "
     r"path,label\[,split\].*data.csv"),
    ([("a/a.0.jpg", "a", "holdout")], ("path", "label", "split"),
     r"labels.csv:2: split 'holdout' is none of train, validation, test.*data.train_split"),
    ([("a/missing.jpg", "a")], ("path", "label"), r"labels.csv:2: a/missing.jpg is not an "
     r"image file"),
    ([("a/a.0.jpg", "a"), ("a/a.0.jpg", "b")], ("path", "label"), r"labels.csv:3: .* listed "
     "twice"),
])
def test_csv_errors_name_the_file_and_line(tmp_path: Path, rows: list, header: tuple,
                                           expected: str) -> None:
    source = make_class_folders(tmp_path / "src", {"a": 2})
    write_csv(source / "labels.csv", rows, header=header)
    with pytest.raises(IngestError, match=expected) as error:
        run_ingest(params_for(tmp_path / "work", source, layout="csv"))
    assert str(error.value).startswith(f"{source}: labels.csv")


def test_same_file_names_from_two_folders_of_one_class_both_arrive(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for folder in ("2023", "2024"):
        make_class_folders(source / folder, {"cats": 1})
    (source / "2024" / "cats" / "cats.0.jpg").write_bytes(b"\xff\xd8\xff other bytes")
    write_csv(source / "labels.csv", [("2023/cats/cats.0.jpg", "cats", "train"),
                                      ("2024/cats/cats.0.jpg", "cats", "train")])
    raw = run_ingest(params_for(tmp_path / "work", source))
    assert len(names(raw, "train")["cats"]) == 2


def test_an_empty_test_folder_means_test_is_held_out_of_validation(tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "src", per_class={"train": 2, "validation": 5})
    (source / "test").mkdir()
    raw = run_ingest(params_for(tmp_path / "work", source))
    assert {label: len(files) for label, files in names(raw, "test").items()} == {
        "cats": 1, "dogs": 1}


def test_a_csv_that_is_not_utf8_is_refused_saying_so(tmp_path: Path) -> None:
    """Regression: a CSV saved by a spreadsheet as cp1252 escaped as a UnicodeDecodeError."""
    source = make_class_folders(tmp_path / "src", {"a": 2})
    (source / "labels.csv").write_bytes("path,label\na/a.0.jpg,caf\xe9\n".encode("cp1252"))
    with pytest.raises(IngestError, match=r"labels.csv cannot be read as a UTF-8 CSV.*Save it "
                       "as UTF-8"):
        run_ingest(params_for(tmp_path / "work", source, layout="csv"))
