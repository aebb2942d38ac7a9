"""`warmstart init --source PATH_OR_URL`: set a project up for the user's own images.

It ingests the source into a temporary folder exactly as the ``ingest`` stage would (same
layout detection, same splits, nothing extracted into the project), then writes what it found
into params.yaml (only the ``data`` keys it determined, comments kept: ruamel.yaml round trip,
atomic write), proposes the TFDV schema of that training split into ``paths.schema``, and logs
what to review before ``dvc repro``. ``dry_run`` shows the same without writing anything.
"""

from __future__ import annotations

import difflib
import io
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from warmstart.atomic import write_text
from warmstart.config.params import Params, is_url, params_from_dict, read_yaml
from warmstart.data.fetch import IngestError
from warmstart.data.ingesting import Ingested, class_counts, ingest_into, log_summary
from warmstart.data.splitting import read_assignments
from warmstart.layout import SPLITS, TEST, TRAIN, VALIDATION
from warmstart.store import Store
from warmstart.validation.schema import propose_schema, schema_diff, write_schema

logger = logging.getLogger(__name__)


def run_init(params_file: Path, source: str, dry_run: bool = False) -> int:
    """Inspect ``source``, then write ``data.*`` and the schema proposal (unless ``dry_run``)."""
    params_file = Path(params_file).resolve()
    text = params_file.read_text()
    params = _params_with_source(text, params_file.parent, source)
    with tempfile.TemporaryDirectory(prefix="warmstart-init-") as tmp:
        # The pHashes init computes are kept for the first ingest, except in a dry run.
        store = Store(params.path("store"), params.store.max_bytes,
                      params.store.enabled and not dry_run)
        found = ingest_into(params, Path(tmp) / "raw",
                            read_assignments(params.path("split_assignments")), store)
        schema = propose_schema(Path(tmp) / "raw", TRAIN, params.validate)
    log_summary(found)
    _warn_about_gaps(found)
    new_text = edit_data_keys(text, detected_keys(params, found))
    sys.stdout.write("".join(difflib.unified_diff(
        text.splitlines(keepends=True), new_text.splitlines(keepends=True), str(params_file),
        "proposal")) + schema_diff(params.path("schema"), schema))
    if dry_run:
        logger.info("Dry run: nothing written. Without --dry-run, init writes the diffs above.")
        return 0
    write_text(params_file, new_text)
    write_schema(params.path("schema"), schema)
    logger.info("Wrote the data section of %s and the schema proposal %s. Next: review them "
                "(`git diff %s %s`: class names in the label domain, image sizes), commit "
                "them, then run `dvc repro`.", params_file, params.path("schema"),
                params_file.name, Path(params.paths.schema).parent.as_posix() + "/")
    return 0


def _params_with_source(text: str, root: Path, source: str) -> Params:
    """The project's params with ``data.source`` replaced (validated: it must exist) and the
    layout detected afresh; the old checksum pin belongs to the old source."""
    if not is_url(source) and not Path(source).exists():
        raise IngestError(f"--source {source}: no such file or folder (give a .zip, a folder "
                          "or an http(s) URL).")
    raw = read_yaml(text)
    raw["data"].update(source=source_value(source, root), layout="auto", sha256=None)
    return params_from_dict(raw, root=root)


def source_value(source: str, root: Path) -> str:
    """``data.source`` for a command-line source: a URL as given; a local path relative to
    params.yaml when it lies in the project or beside it (``../photos``: a clone next to the
    same data works unchanged), else absolute (it was relative to the shell)."""
    if is_url(source):
        return source
    path = Path(os.path.abspath(source))
    relative = Path(os.path.relpath(path, root))
    return str(path) if relative.parts[:2] == ("..", "..") else relative.as_posix()


def detected_keys(params: Params, found: Ingested) -> dict[str, Any]:
    """The ``data`` keys init writes: the source, its layout and split names. A checksum pin of
    the previous source is cleared, and none is set: a dataset that grows (new images keep the
    old ones' splits) would fail it; ingest logs the value to pin."""
    keys: dict[str, Any] = {"source": params.data.source, "layout": found.dataset.layout,
                            "sha256": None}
    names = {TRAIN: "train_split", VALIDATION: "validation_split", TEST: "test_split"}
    keys.update({names[split]: name for split, name in found.dataset.splits.items()})
    return keys


def edit_data_keys(text: str, keys: dict[str, Any]) -> str:
    """params.yaml text with these ``data`` keys set and everything else (comments, quoting,
    ``null``) as it was."""
    yaml = YAML()  # round trip
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long value onto a new line
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar(
        "tag:yaml.org,2002:null", "null"))
    document = yaml.load(text)
    for key, value in keys.items():
        if document["data"].get(key) != value:
            document["data"][key] = value
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def _warn_about_gaps(found: Ingested) -> None:
    """What training or validate would trip over: one class, a class missing from a split."""
    counts = class_counts(found.rows)
    classes = sorted({row.label for row in found.rows})
    if len(classes) < 2:
        logger.warning("Only one class (%s): a classifier needs two or more class folders or "
                       "labels.", ", ".join(classes))
    for split in SPLITS:
        missing = [c for c in classes if c not in counts[split]]
        if missing:
            logger.warning("%s has no images of %s (too few images, or data.split_fractions / "
                           "data.test_fraction give it none): validate will report a missing "
                           "class.", split, ", ".join(missing))
