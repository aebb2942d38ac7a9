"""Stage `validate`: TFDV statistics over the per-image table, checked against the curated schema.

Outputs: ``paths.validated`` (``images.csv``: the table; ``classes.json``: class names) for the
next stages, and ``paths.validation_report`` (``anomalies.json``, TFDV ``anomalies_<split>.pbtxt``
and ``stats_<split>.pb`` for TFDV's tooling). Any anomaly fails the stage with a readable list
that names the offending files; the report is written first so it can be inspected.
"""

from __future__ import annotations

import difflib
import json
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from warmstart.atomic import atomic_dir, write_json, write_text
from warmstart.errors import WarmstartError
from warmstart.imagetable import NO_CLASS, STAT_COLUMNS, build_table
from warmstart.imaging import TF_DECODABLE_FORMATS
from warmstart.params import Params

logger = logging.getLogger(__name__)

TABLE_FILE = "images.csv"
CLASSES_FILE = "classes.json"
REPORT_FILE = "anomalies.json"
#: Curated domains written into a schema proposal (see `propose_schema`).
CURATED_STRING_DOMAINS = {
    "format": TF_DECODABLE_FORMATS,
    "mode": ("RGB", "L", "RGBA", "P", "LA", "CMYK", "I;16"),
    "extension": ("jpg", "jpeg", "png", "gif", "bmp"),
}
CURATED_INT_DOMAINS = {"decodable": (1, 1), "width": (16, None), "height": (16, None),
                       "channels": (1, 4), "file_bytes": (1, None)}
MAX_LISTED_FILES = 10


class ValidationFailed(WarmstartError):
    """The dataset broke the schema or a structural rule; the message lists what and where."""


@dataclass
class Findings:
    """Everything wrong with a dataset version: TFDV anomalies and per-file problems."""

    anomalies: dict[str, anomalies_pb2.Anomalies] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)

    def add(self, check: str, reason: str, paths: Iterable[str] = ()) -> None:
        self.problems.append({"check": check, "reason": reason, "files": sorted(paths)})

    @property
    def anomaly_count(self) -> int:
        return sum(len(a.anomaly_info) + bool(a.HasField("dataset_anomaly_info"))
                   for a in self.anomalies.values())

    @property
    def ok(self) -> bool:
        return not self.problems and self.anomaly_count == 0


def run_validate(params: Params) -> Path:
    """Validate ``paths.raw`` against ``paths.schema``; write the table, classes and report."""
    schema = load_schema(params.path("schema"))
    splits = (params.data.train_split, params.data.validation_split)
    table = build_table(params.path("raw"), splits, params.validate.workers,
                        params.validate.max_image_pixels)
    findings = Findings()
    check_structure(table, splits, findings)
    check_domains(table, schema, findings)
    stats = {split: split_statistics(table, split) for split in splits}
    for split, split_stats in stats.items():
        findings.anomalies[split] = tfdv.validate_statistics(split_stats, schema)
    write_report(params.path("validation_report"), findings, stats)
    if not findings.ok:
        raise ValidationFailed(format_findings(findings, params.path("validation_report")))
    return write_validated(params.path("validated"), table, class_names(table, splits[0]))


def load_schema(path: Path) -> schema_pb2.Schema:
    if not path.is_file():
        raise ValidationFailed(f"No schema at {path}. Create one with `warmstart schema --write`, "
                               "review it, and commit it.")
    return tfdv.load_schema_text(str(path))


def split_statistics(table: pd.DataFrame,
                     split: str) -> statistics_pb2.DatasetFeatureStatisticsList:
    rows = table[table["split"] == split][STAT_COLUMNS]
    return tfdv.generate_statistics_from_dataframe(rows.reset_index(drop=True))


def class_names(table: pd.DataFrame, train_split: str) -> list[str]:
    labels = table.loc[table["split"] == train_split, "label"]
    return sorted(set(labels) - {NO_CLASS})


def check_structure(table: pd.DataFrame, splits: tuple[str, str], findings: Findings) -> None:
    """Rules a schema cannot state: class folders agree across splits, files are in classes."""
    loose = table[table["label"] == NO_CLASS]
    if len(loose):
        findings.add("class folder", "file lies directly in a split folder, not in a class "
                     "folder", loose["path"])
    train_classes = set(class_names(table, splits[0]))
    if len(train_classes) < 2:
        findings.add("classes", f"split '{splits[0]}' has {len(train_classes)} class folder(s) "
                     "with images; at least 2 are needed")
    for split in splits:
        present = set(table.loc[table["split"] == split, "label"]) - {NO_CLASS}
        for label in sorted(present - train_classes):
            paths = table.loc[(table["split"] == split) & (table["label"] == label), "path"]
            findings.add("unknown class", f"class '{label}' in '{split}' is not a class of "
                         f"'{splits[0]}'", paths)
        for label in sorted(train_classes - present):
            findings.add("missing class", f"class '{label}' has no images in '{split}'")


def check_domains(table: pd.DataFrame, schema: schema_pb2.Schema, findings: Findings) -> None:
    """Name the files behind each domain violation (TFDV reports only counts and values)."""
    for feature in schema.feature:
        if feature.name not in table.columns:
            continue
        column = table[feature.name]
        domain = tfdv.get_domain(schema, feature.name) if _has_domain(feature) else None
        if isinstance(domain, schema_pb2.StringDomain):
            bad = table[~column.astype(str).isin(set(domain.value))]
            reason = f"{feature.name} not in the schema's domain {list(domain.value)}"
        elif isinstance(domain, schema_pb2.IntDomain):
            low = domain.min if domain.HasField("min") else float("-inf")
            high = domain.max if domain.HasField("max") else float("inf")
            bad = table[(column < low) | (column > high)]
            reason = f"{feature.name} outside the schema's range [{low}, {high}]"
        else:
            continue
        for value, group in bad.groupby(feature.name):
            detail = _errors_of(group) if feature.name == "decodable" else f"value {value!r}"
            findings.add(f"schema: {feature.name}", f"{reason}: {detail}", group["path"])


def _has_domain(feature: schema_pb2.Feature) -> bool:
    return feature.WhichOneof("domain_info") in ("domain", "string_domain", "int_domain")


def _errors_of(group: pd.DataFrame) -> str:
    return "; ".join(f"{p}: {e}" for p, e in zip(group["path"], group["error"], strict=True))


def write_report(folder: Path, findings: Findings,
                 stats: dict[str, statistics_pb2.DatasetFeatureStatisticsList]) -> None:
    with atomic_dir(folder) as staging:
        for split, anomalies in findings.anomalies.items():
            tfdv.write_anomalies_text(anomalies, str(staging / f"anomalies_{split}.pbtxt"))
            (staging / f"stats_{split}.pb").write_bytes(stats[split].SerializeToString())
        write_json(staging / REPORT_FILE, report_dict(findings))


def report_dict(findings: Findings) -> dict:
    tfdv_anomalies = {
        split: {name: {"short_description": info.short_description,
                       "description": info.description,
                       "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity)}
                for name, info in sorted(anomalies.anomaly_info.items())}
        for split, anomalies in findings.anomalies.items()}
    return {"ok": findings.ok, "tfdv_anomalies": tfdv_anomalies, "problems": findings.problems}


def format_findings(findings: Findings, report: Path) -> str:
    lines = [f"Data validation failed: {findings.anomaly_count} TFDV anomal(y/ies), "
             f"{len(findings.problems)} problem(s). Full report: {report / REPORT_FILE}"]
    for split, anomalies in findings.anomalies.items():
        for name, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"- [{split}] {name}: {info.short_description} -- {info.description}")
    for problem in findings.problems:
        files = problem["files"]
        shown = ", ".join(files[:MAX_LISTED_FILES])
        more = f" (+{len(files) - MAX_LISTED_FILES} more)" if len(files) > MAX_LISTED_FILES else ""
        lines.append(f"- {problem['check']}: {problem['reason']}"
                     + (f" [files: {shown}{more}]" if files else ""))
    lines.append("Fix or remove the listed files in the data source (raw data is never changed "
                 "by the pipeline), or, if the data is right, update the schema "
                 "(`warmstart schema`) and commit it.")
    return "\n".join(lines)


def write_validated(folder: Path, table: pd.DataFrame, classes: list[str]) -> Path:
    with atomic_dir(folder) as staging:
        table.to_csv(staging / TABLE_FILE, index=False)
        write_json(staging / CLASSES_FILE, classes)
    logger.info("Validated %d images in %d classes: %s", len(table), len(classes), classes)
    return folder


def read_validated(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    table = pd.read_csv(folder / TABLE_FILE, keep_default_na=False)
    return table, json.loads((folder / CLASSES_FILE).read_text())


def propose_schema(params: Params) -> schema_pb2.Schema:
    """Infer a schema from the training split, then apply the curated domains above."""
    table = build_table(params.path("raw"), (params.data.train_split,),
                        params.validate.workers, params.validate.max_image_pixels)
    schema = tfdv.infer_schema(split_statistics(table, params.data.train_split))
    for name, values in CURATED_STRING_DOMAINS.items():
        tfdv.set_domain(schema, name, schema_pb2.StringDomain(name=name, value=values))
    for name, (low, high) in CURATED_INT_DOMAINS.items():
        tfdv.set_domain(schema, name, schema_pb2.IntDomain(name=name, min=low, max=high))
    referenced = {f.domain for f in schema.feature if f.WhichOneof("domain_info") == "domain"}
    unused = [d for d in schema.string_domain if d.name not in referenced]
    for domain in unused:
        schema.string_domain.remove(domain)
    return schema


def run_schema(params: Params, write: bool) -> int:
    """`warmstart schema`: print the proposal's diff against the committed schema; maybe write."""
    target = params.path("schema")
    proposal = propose_schema(params)
    diff = schema_diff(target, proposal)
    sys.stdout.write(diff or f"The proposal equals {target}.\n")
    if write and diff:
        write_schema(target, proposal)
        logger.info("Wrote %s: review it, curate it if needed, and commit it.", target)
    return 0


def schema_diff(current: Path, proposal: schema_pb2.Schema) -> str:
    """A unified diff from the committed schema to the proposal ('' when equal)."""
    old = current.read_text().splitlines(keepends=True) if current.is_file() else []
    new = _schema_text(proposal).splitlines(keepends=True)
    return "".join(difflib.unified_diff(old, new, str(current), "proposal"))


def write_schema(path: Path, schema: schema_pb2.Schema) -> None:
    write_text(path, _schema_text(schema))


def _schema_text(schema: schema_pb2.Schema) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(schema)
