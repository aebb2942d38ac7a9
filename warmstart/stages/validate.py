"""Stage `validate`: catch what breaks training before it is trained on.

1. The per-image table (``warmstart.imagetable``): real format, mode, size, decodability, hashes.
2. Per-file checks TFDV cannot express (``warmstart.imagechecks``): unreadable files, symlinks,
   decompression bombs, schema domain violations by file, extension mismatches, too small,
   extreme aspect, blank, exact and near duplicates within and across splits (leakage).
3. TFDV statistics per split on Apache Beam (``warmstart.beamstats``), validated against the
   curated schema, with train↔validation skew and drift against the previous version's
   statistics (``paths.validation_baseline``, a persistent DVC output), thresholds from params.
4. Policy ``validate.policy``: ``fail`` stops on any problem; ``quarantine`` leaves the bad files
   out of training (raw data is never touched) and lists them with reasons in
   ``quarantine.json``. Problems that excluding files cannot fix (TFDV anomalies of the clean
   data, drift, skew, class balance, a missing class, too many bad files) fail either way.

Outputs: ``paths.validated`` (``images.csv``: every file with ``quarantined`` and its reasons;
``classes.json``) for preprocess; ``paths.validation_report`` (``anomalies.json``, TFDV
``anomalies_<split>.pbtxt``, ``stats_<split>.pb``, ``quarantine.json``, ``facets.html``);
``paths.validation_html`` (offline report); ``paths.validate_metrics``; the new baseline.
The reports are written before the stage fails, so a failure can be inspected.
"""

from __future__ import annotations

import difflib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.utils import stats_util
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from warmstart.atomic import atomic_dir, write_json, write_text
from warmstart.beamstats import beam_statistics
from warmstart.errors import WarmstartError
from warmstart.imagechecks import Problem, file_checks
from warmstart.imagetable import (
    CATEGORICAL_COLUMNS,
    NO_CLASS,
    OK,
    STAT_COLUMNS,
    build_table,
)
from warmstart.imaging import TF_DECODABLE_FORMATS
from warmstart.params import Params, ValidateParams
from warmstart.validated import write_validated
from warmstart.validation_report import log_summary, write_html

logger = logging.getLogger(__name__)

REPORT_FILE = "anomalies.json"
QUARANTINE_FILE = "quarantine.json"
FACETS_FILE = "facets.html"
#: Curated domains written into a schema proposal (see `propose_schema`).
CURATED_STRING_DOMAINS = {
    "format": TF_DECODABLE_FORMATS,
    "mode": ("RGB",),
    "extension": ("jpg", "jpeg", "png", "gif", "bmp"),
}
CURATED_INT_DOMAINS = {"decodable": (1, 1), "width": (16, 8192), "height": (16, 8192),
                       "channels": (1, 4), "file_bytes": (1, None)}
MAX_LISTED_FILES = 20

Stats = statistics_pb2.DatasetFeatureStatisticsList


class ValidationFailed(WarmstartError):
    """The dataset broke the schema or a rule; the message lists what and which files."""


@dataclass
class Findings:
    """Everything found in a dataset version: TFDV anomalies per split and problems."""

    policy: str
    anomalies: dict[str, anomalies_pb2.Anomalies] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    quarantine: dict[str, list[str]] = field(default_factory=dict)

    @property
    def anomaly_count(self) -> int:
        return sum(len(a.anomaly_info) + bool(a.HasField("dataset_anomaly_info"))
                   for a in self.anomalies.values())

    @property
    def blocking(self) -> list[Problem]:
        """Problems that fail the stage under the policy."""
        if self.policy == "fail":
            return [p for p in self.problems if not p.advisory]
        return [p for p in self.problems if not p.quarantine and not p.advisory]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.advisory]

    @property
    def ok(self) -> bool:
        return not self.blocking and self.anomaly_count == 0


def run_validate(params: Params) -> Path:
    """Validate ``paths.raw``; write the table, classes, reports, metrics and new baseline."""
    started = time.monotonic()
    limits = params.validate
    schema = with_comparators(load_schema(params.path("schema")), limits)
    splits = (params.data.train_split, params.data.validation_split)
    table = build_table(params.path("raw"), splits, limits)
    findings = Findings(limits.policy)
    findings.problems = file_checks(table, params.path("raw"), splits, schema, limits)
    if limits.policy == "quarantine":
        findings.quarantine = quarantine_reasons(findings.problems)
    table = mark_quarantined(table, findings.quarantine)
    clean = table[table["quarantined"] == 0]
    findings.problems += dataset_checks(clean, splits, len(table), limits)
    stats = beam_statistics({s: clean[clean["split"] == s] for s in splits},
                            limits.beam_options)
    findings.problems += check_class_balance(stats, limits.max_class_ratio)
    baseline = read_baseline(params.path("validation_baseline"), splits)
    findings.anomalies = tfdv_anomalies(stats, schema, splits, baseline)
    write_outputs(params, table, findings, stats, time.monotonic() - started)
    if not findings.ok:
        raise ValidationFailed(format_findings(findings, params.path("validation_report")))
    write_baseline(params.path("validation_baseline"), stats)
    return write_validated(params.path("validated"), table, class_names(clean, splits[0]))


def load_schema(path: Path) -> schema_pb2.Schema:
    if not path.is_file():
        raise ValidationFailed(f"No schema at {path}. Create one with `warmstart schema --write`, "
                               "review it, and commit it.")
    return tfdv.load_schema_text(str(path))


def with_comparators(schema: schema_pb2.Schema, limits: ValidateParams) -> schema_pb2.Schema:
    """The schema with skew and drift comparators set from params (null: the schema's own)."""
    schema = schema.__class__.FromString(schema.SerializeToString())
    for feature in schema.feature:
        if feature.name not in STAT_COLUMNS:
            continue
        categorical = feature.name in CATEGORICAL_COLUMNS
        for comparator, linf, jsd in ((feature.skew_comparator, limits.skew_linf,
                                       limits.skew_jsd),
                                      (feature.drift_comparator, limits.drift_linf,
                                       limits.drift_jsd)):
            if categorical and linf is not None:
                comparator.infinity_norm.threshold = linf
            elif not categorical and jsd is not None:
                comparator.jensen_shannon_divergence.threshold = jsd
    return schema


def quarantine_reasons(problems: list[Problem]) -> dict[str, list[str]]:
    """file -> every reason it is quarantined for, "check: reason"."""
    reasons: dict[str, list[str]] = {}
    for problem in problems:
        for path, why in problem.quarantine.items():
            reasons.setdefault(path, []).append(f"{problem.check}: {why}")
    return dict(sorted(reasons.items()))


def mark_quarantined(table: pd.DataFrame, quarantine: dict[str, list[str]]) -> pd.DataFrame:
    return table.assign(
        quarantined=table["path"].isin(quarantine).astype(int),
        quarantine_reason=table["path"].map(lambda p: "; ".join(quarantine.get(p, []))))


def dataset_checks(clean: pd.DataFrame, splits: tuple[str, str], total: int,
                   limits: ValidateParams) -> list[Problem]:
    """Rules over the files that are trained on: enough classes, in every split; and not too
    many files quarantined."""
    problems = []
    train_classes = set(class_names(clean, splits[0]))
    if len(train_classes) < 2:
        problems.append(Problem("classes", f"split '{splits[0]}' has {len(train_classes)} "
                                "class folder(s) with usable images; at least 2 are needed"))
    for split in splits[1:]:
        present = set(clean.loc[clean["split"] == split, "label"])
        problems += [Problem("missing class", f"class '{label}' has no usable images in "
                             f"'{split}'") for label in sorted(train_classes - present)]
    excluded = total - len(clean)
    if total and excluded / total > limits.max_quarantine_fraction:
        problems.append(Problem(
            "too many bad files", f"{excluded} of {total} files ({excluded / total:.1%}) are "
            f"quarantined, above validate.max_quarantine_fraction="
            f"{limits.max_quarantine_fraction}: something is systematically wrong"))
    return problems


def label_counts(stats: Stats) -> dict[str, int]:
    """Images per class, from the TFDV statistics of the label feature."""
    if not stats.datasets or stats.datasets[0].num_examples == 0:
        return {}
    feature = stats_util.get_feature_stats(stats.datasets[0], tfdv.FeaturePath(["label"]))
    buckets = feature.string_stats.rank_histogram.buckets
    return {b.label: int(b.sample_count) for b in buckets}


def check_class_balance(stats: dict[str, Stats], max_ratio: float) -> list[Problem]:
    problems = []
    for split, split_stats in stats.items():
        counts = label_counts(split_stats)
        if len(counts) > 1 and max(counts.values()) > max_ratio * min(counts.values()):
            problems.append(Problem("class balance", f"'{split}': {counts}: the largest class "
                                    f"is over validate.max_class_ratio={max_ratio} times the "
                                    "smallest"))
    return problems


def tfdv_anomalies(stats: dict[str, Stats], schema: schema_pb2.Schema, splits: tuple[str, str],
                   baseline: dict[str, Stats]) -> dict[str, anomalies_pb2.Anomalies]:
    """``tfdv.validate_statistics`` per split: schema, train↔validation skew, drift."""
    train, validation = splits
    return {
        train: tfdv.validate_statistics(stats[train], schema,
                                        serving_statistics=stats[validation],
                                        previous_statistics=baseline.get(train)),
        validation: tfdv.validate_statistics(stats[validation], schema,
                                             previous_statistics=baseline.get(validation)),
    }


def read_baseline(folder: Path, splits: tuple[str, ...]) -> dict[str, Stats]:
    """The previous version's statistics, per split, where present."""
    found = {s: tfdv.load_stats_binary(str(folder / f"stats_{s}.pb")) for s in splits
             if (folder / f"stats_{s}.pb").is_file()}
    if found:
        logger.info("Drift: comparing with the baseline statistics in %s", folder)
    else:
        logger.info("Drift: no baseline in %s yet; this version becomes the baseline", folder)
    return found


def write_baseline(folder: Path, stats: dict[str, Stats]) -> None:
    with atomic_dir(folder) as staging:
        for split, split_stats in stats.items():
            (staging / f"stats_{split}.pb").write_bytes(split_stats.SerializeToString())


def class_names(table: pd.DataFrame, train_split: str) -> list[str]:
    labels = table.loc[table["split"] == train_split, "label"]
    return sorted(set(labels) - {NO_CLASS})


def write_outputs(params: Params, table: pd.DataFrame, findings: Findings,
                  stats: dict[str, Stats], seconds: float) -> None:
    """The report folder, the HTML report and the metrics; then the terminal summary."""
    report = params.path("validation_report")
    with atomic_dir(report) as staging:
        for split, anomalies in findings.anomalies.items():
            tfdv.write_anomalies_text(anomalies, str(staging / f"anomalies_{split}.pbtxt"))
            (staging / f"stats_{split}.pb").write_bytes(stats[split].SerializeToString())
        write_json(staging / REPORT_FILE, report_dict(findings))
        write_json(staging / QUARANTINE_FILE, quarantine_manifest(table))
        write_text(staging / FACETS_FILE, facets_html(stats))
    metrics = metrics_dict(table, findings, seconds)
    write_json(params.path("validate_metrics"), metrics)
    write_html(params.path("validation_html"), params, table, findings, stats)
    log_summary(table, findings, metrics, report)


def facets_html(stats: dict[str, Stats]) -> str:
    """TFDV's own interactive Facets view (loads the Facets library from the internet)."""
    (lhs_name, lhs), (rhs_name, rhs) = stats.items()
    body = tfdv.utils.display_util.get_statistics_html(lhs, rhs, lhs_name, rhs_name)
    return ("<!doctype html><meta charset='utf-8'><title>TFDV statistics (Facets)</title>"
            "<p>Interactive Facets Overview of the TFDV statistics; it loads the Facets "
            "library from the internet. The offline view is validation.html.</p>" + body)


def quarantine_manifest(table: pd.DataFrame) -> list[dict]:
    rows = table[table["quarantined"] == 1]
    return [{"path": path, "split": split, "label": label, "reasons": reasons.split("; ")}
            for path, split, label, reasons in rows[["path", "split", "label",
                                                     "quarantine_reason"]].itertuples(
                                                         index=False)]


def metrics_dict(table: pd.DataFrame, findings: Findings, seconds: float) -> dict:
    by_check: dict[str, int] = {}
    for problem in findings.problems:
        by_check[problem.check] = by_check.get(problem.check, 0) + max(len(problem.files), 1)
    return {"ok": findings.ok, "policy": findings.policy, "images": len(table),
            "images_per_split": table.groupby("split").size().to_dict(),
            "quarantined": int(table["quarantined"].sum()),
            "quarantined_per_split": table.groupby("split")["quarantined"].sum().to_dict(),
            "trained_on": int((table["quarantined"] == 0).sum()),
            "problem_files_per_check": dict(sorted(by_check.items())),
            "tfdv_anomalies": findings.anomaly_count, "seconds": round(seconds, 1),
            "images_per_second": round(len(table) / max(seconds, 1e-9), 1)}


def report_dict(findings: Findings) -> dict:
    tfdv_anomalies = {
        split: {name: {"short_description": info.short_description,
                       "description": info.description,
                       "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity)}
                for name, info in sorted(anomalies.anomaly_info.items())}
        for split, anomalies in findings.anomalies.items()}
    return {"ok": findings.ok, "policy": findings.policy, "tfdv_anomalies": tfdv_anomalies,
            "drift_skew": drift_skew_dict(findings),
            "problems": [p.as_dict() for p in findings.problems],
            "blocking": [p.check for p in findings.blocking], "quarantine": findings.quarantine}


def drift_skew_dict(findings: Findings) -> dict:
    """Every skew/drift measurement TFDV made: split -> feature -> kind -> value, threshold."""
    result: dict = {}
    for split, anomalies in findings.anomalies.items():
        for info in anomalies.drift_skew_info:
            name = ".".join(info.path.step)
            for kind, measurements in (("drift", info.drift_measurements),
                                       ("skew", info.skew_measurements)):
                for m in measurements:
                    result.setdefault(split, {}).setdefault(name, {})[kind] = {
                        "type": m.Type.Name(m.type), "value": round(m.value, 6),
                        "threshold": m.threshold}
    return result


def format_findings(findings: Findings, report: Path) -> str:
    blocking = findings.blocking
    lines = [f"Data validation failed (policy {findings.policy}): {findings.anomaly_count} TFDV "
             f"anomal(y/ies), {len(blocking)} blocking problem(s). Full report: "
             f"{report / REPORT_FILE}"]
    for split, anomalies in findings.anomalies.items():
        for name, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"- [{split}] {name}: {info.short_description} -- {info.description}")
    for problem in blocking:
        lines.append(f"- {problem.check}: {problem.reason}" + _listed(problem))
    for problem in findings.warnings:
        lines.append(f"- warning: {problem.check}: {problem.reason}" + _listed(problem))
    if findings.quarantine:
        lines.append(f"({len(findings.quarantine)} file(s) quarantined: "
                     f"{report / QUARANTINE_FILE})")
    lines.append("Fix or remove the listed files in the data source (raw data is never changed "
                 "by the pipeline), set validate.policy=quarantine to train without them, or, "
                 "if the data is right, update the schema (`warmstart schema`) or the thresholds "
                 "in params.yaml and commit them.")
    return "\n".join(lines)


def _listed(problem: Problem) -> str:
    files = problem.files
    if not files:
        return ""
    shown = [f"{f} ({problem.quarantine[f]})" if f in problem.quarantine else f
             for f in files[:MAX_LISTED_FILES]]
    more = f" (+{len(files) - MAX_LISTED_FILES} more)" if len(files) > MAX_LISTED_FILES else ""
    return f" [files: {', '.join(shown)}{more}]"


def propose_schema(params: Params) -> schema_pb2.Schema:
    """Infer a schema from the readable training images, then apply the curated domains."""
    train = params.data.train_split
    table = build_table(params.path("raw"), (train,), params.validate)
    stats = beam_statistics({train: table[table["status"] == OK]}, params.validate.beam_options)
    schema = tfdv.infer_schema(stats[train])
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
