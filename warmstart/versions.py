"""What a run was made from: DVC's record of a stage's outputs (``dvc.lock``) and content digests.

The one reader of ``dvc.lock`` in warmstart: the model card and the gate state the data version
with it, the Prefect tasks report the hashes of what a stage wrote.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from warmstart.layout import DVC_LOCK_FILE


def locked_stages(root: Path) -> dict[str, dict[str, Any]]:
    """The ``stages`` of dvc.lock (what DVC recorded for each stage); {} before the first run."""
    lock = root / DVC_LOCK_FILE
    if not lock.is_file():
        return {}
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {})


def locked_outs(root: Path, stage: str) -> list[dict[str, Any]]:
    """The ``outs`` entries DVC recorded for ``stage`` (path, md5, size, nfiles); [] if none."""
    return list(locked_stages(root).get(stage, {}).get("outs", []))


def data_version(root: Path, raw: str) -> dict[str, Any]:
    """Version of ``raw`` (``paths.raw``): DVC's directory hash from dvc.lock, else computed."""
    for out in locked_outs(root, "ingest"):
        if Path(out.get("path", "")) == Path(raw) and "md5" in out:
            return {"source": "dvc.lock", "md5": out["md5"], "files": out.get("nfiles"),
                    "bytes": out.get("size")}
    return {"source": "computed (sha256 of relative paths and file hashes)",
            **tree_digest(root / raw)}


def tree_digest(folder: Path) -> dict[str, Any]:
    """sha256 over every file's relative path and content hash, in sorted order."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return {"sha256": digest.hexdigest(), "files": len(files),
            "bytes": sum(p.stat().st_size for p in files)}
