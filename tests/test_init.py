"""`warmstart init --source`: a new user's images in, params.yaml's data keys and a proposed
schema out, comments kept, nothing ingested into the project, a summary of what was found."""

from __future__ import annotations

import difflib
import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers.images import make_dataset
from tests.helpers.shared import REPO
from tests.helpers.sources import make_class_folders, zip_tree
from warmstart.cli import main
from warmstart.config.params import load_params
from warmstart.data.onboarding import source_value
from warmstart.stages.ingest import run_ingest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A checkout's params.yaml, comments and all, in an empty project folder."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    return work


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines())
            if line.startswith(("-", "+"))]


def test_init_on_class_folders_writes_params_and_schema_and_logs_a_summary(
        tmp_path: Path, project: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = make_class_folders(tmp_path / "photos", {"cats": 20, "dogs": 10, "birds": 10})
    (source / "LICENSE.txt").write_text("CC-BY")
    before = (project / "params.yaml").read_text()
    with caplog.at_level(logging.INFO):
        assert main(["--params", str(project / "params.yaml"), "init", "--source",
                     str(source)]) == 0
    after = (project / "params.yaml").read_text()
    assert [" ".join(line.split("#")[0].split()) for line in changed_lines(before, after)] == [
        f"- source: {yaml.safe_load(before)['data']['source']}", "+ source: ../photos",
        "- layout: auto", "+ layout: class_folders"]  # beside the project: relative
    assert "# pin the archive: verified before extraction when set" in after  # comments kept
    params = load_params(project / "params.yaml")
    assert (params.data.source, params.data.layout) == ("../photos", "class_folders")
    schema = params.path("schema").read_text()
    assert all(f'value: "{label}"' in schema for label in ("birds", "cats", "dogs"))
    assert not (project / "data" / "raw").exists()  # inspected in a temporary folder
    run_ingest(params)  # the pHashes init computed are in the store: none is computed again
    assert json.loads(params.path("ingest_details").read_text())["computed_images"] == 0
    for expected in ("class_folders layout in ./, 40 images, splits: train=32, validation=4, "
                     "test=4", "train: birds=8, cats=16, dogs=8", "imbalance (largest / "
                     "smallest class) 2.00: cats 20 / birds 10", "git diff params.yaml schema/",
                     "dvc repro", "LICENSE.txt"):
        assert expected in caplog.text


def test_init_dry_run_on_a_zip_of_split_folders_shows_and_writes_nothing(
        tmp_path: Path, project: Path, capsys: pytest.CaptureFixture) -> None:
    folders = make_dataset(tmp_path / "src", per_class={"train": 6, "val": 5})
    (project / "incoming").mkdir()
    archive = zip_tree(folders, project / "incoming" / "pets.zip", prefix="pets")
    before = (project / "params.yaml").read_text()
    assert main(["--params", str(project / "params.yaml"), "init", "--dry-run", "--source",
                 str(archive)]) == 0
    assert (project / "params.yaml").read_text() == before
    assert not (project / "schema").exists()
    assert not (project / ".warmstart").exists()  # no store either
    shown = capsys.readouterr().out
    for expected in ("+  source: incoming/pets.zip", "+  layout: split_folders",
                     "+  validation_split: val", 'value: "cats"'):
        assert expected in shown
    assert "+  sha256" not in shown  # null stays null: a growing dataset must not fail a pin


def test_init_names_the_source_when_it_holds_no_dataset(tmp_path: Path, project: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "empty"
    (empty / "docs").mkdir(parents=True)
    assert main(["--params", str(project / "params.yaml"), "init", "--source",
                 str(empty)]) == 1
    assert f"{empty} has no train/ and validation/ folders" in caplog.text
    assert (project / "params.yaml").read_text() == (REPO / "params.yaml").read_text()


def test_init_with_a_missing_source_says_so(tmp_path: Path, project: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    assert main(["--params", str(project / "params.yaml"), "init", "--source",
                 str(tmp_path / "nowhere.zip")]) == 1
    assert f"--source {tmp_path / 'nowhere.zip'}: no such file or folder" in caplog.text


def test_init_writes_a_local_source_relative_to_params_yaml_when_in_or_beside_the_project(
        tmp_path: Path) -> None:
    root = tmp_path / "a" / "project"
    assert source_value(str(root / "data" / "in.zip"), root) == "data/in.zip"
    assert source_value(str(tmp_path / "a" / "photos"), root) == "../photos"  # a sibling
    assert source_value(str(tmp_path / "elsewhere"), root) == str(tmp_path / "elsewhere")
    assert source_value("https://example.org/x.zip", root) == "https://example.org/x.zip"
