"""Stage `ingest`: folder, zip and http(s) sources; refusals that keep the workspace safe."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.images import make_dataset
from tests.helpers.project import write_params
from warmstart.stages.ingest import IngestError, download, run_ingest


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
    source = make_dataset(tmp_path / "src", per_class={"train": 2, "val": 1})
    with pytest.raises(IngestError, match="no train/ and validation/ folders.*validation_split"):
        run_ingest(params_for(tmp_path / "work", source))


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
