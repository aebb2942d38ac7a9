"""What validating one dataset version found, and the files that record it.

:class:`Findings` holds the TFDV anomalies per split, the per-file and dataset problems, the
skew and drift comparisons and the class balance; the ``validate.policy`` and each problem's
``advisory`` flag decide which of them block. The functions turn findings into the
report, metrics and quarantine manifest the validate stage writes, and into the failure message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tensorflow_metadata.proto.v0 import anomalies_pb2

from warmstart.errors import WarmstartError
from warmstart.layout import ANOMALIES_FILE, QUARANTINE_FILE
from warmstart.validation.checks import Problem
from warmstart.validation.drift import Comparison, comparisons_dict

MAX_LISTED_FILES = 20


class ValidationFailed(WarmstartError):
    """The dataset broke the schema or a rule; the message lists what and which files."""


@dataclass
class Findings:
    """Everything found in a dataset version: TFDV anomalies per split, problems, skew and
    drift comparisons (each with its threshold), class balance per split."""

    policy: str
    anomalies: dict[str, anomalies_pb2.Anomalies] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    quarantine: dict[str, list[str]] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    balance: dict[str, dict] = field(default_factory=dict)

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


def quarantine_manifest(table: pd.DataFrame) -> list[dict]:
    rows = table[table["quarantined"] == 1]
    return [{"path": path, "split": split, "label": label, "reasons": reasons.split("; ")}
            for path, split, label, reasons in rows[["path", "split", "label",
                                                     "quarantine_reason"]].itertuples(
                                                         index=False)]


#: What metrics/validate.json keeps of :func:`metrics_dict` (``dvc metrics diff``): counts that
#: change only with the data; the per-split, per-class and per-check detail and the timings are
#: in ``paths.validate_details``.
COMPARED = ("ok", "images", "images_per_split", "trained_on", "quarantined", "warnings",
            "blocking", "tfdv_anomalies", "exif_rotated")


def compared_metrics(metrics: dict) -> dict:
    return {key: metrics[key] for key in COMPARED}


def metrics_dict(table: pd.DataFrame, findings: Findings, seconds: float) -> dict:
    by_check: dict[str, int] = {}
    for problem in findings.problems:
        by_check[problem.check] = by_check.get(problem.check, 0) + max(len(problem.files), 1)
    return {"ok": findings.ok, "policy": findings.policy, "images": len(table),
            "images_per_split": _per_split(table, table.groupby("split").size()),
            "quarantined": int(table["quarantined"].sum()),
            "quarantined_per_split": _per_split(table, table.groupby("split")["quarantined"]
                                                .sum()),
            "trained_on": int((table["quarantined"] == 0).sum()),
            "class_balance": findings.balance,
            "exif_rotated": int((table["orientation"] != 1).sum()),
            "problem_files_per_check": dict(sorted(by_check.items())),
            "warnings": len(findings.warnings), "blocking": len(findings.blocking),
            "skew_drift_above_threshold": _exceeded(findings.comparisons),
            "tfdv_anomalies": findings.anomaly_count, "seconds": round(seconds, 1),
            "images_per_second": round(len(table) / max(seconds, 1e-9), 1)}


def _per_split(table: pd.DataFrame, values: pd.Series) -> dict[str, int]:
    """Split -> value, in the table's split order (train, validation, test)."""
    return {split: int(values.get(split, 0)) for split in table["split"].unique()}


def _exceeded(comparisons: list[Comparison]) -> dict[str, int]:
    above = [c for c in comparisons if c.exceeded]
    return {"blocking": sum(c.blocking for c in above),
            "advisory": sum(not c.blocking for c in above), "measured": len(comparisons)}


def report_dict(findings: Findings) -> dict:
    tfdv_anomalies = {
        split: {name: {"short_description": info.short_description,
                       "description": info.description,
                       "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity)}
                for name, info in sorted(anomalies.anomaly_info.items())}
        for split, anomalies in findings.anomalies.items()}
    return {"ok": findings.ok, "policy": findings.policy, "tfdv_anomalies": tfdv_anomalies,
            "drift_skew": comparisons_dict(findings.comparisons), "class_balance": findings.balance,
            "problems": [p.as_dict() for p in findings.problems],
            "blocking": [p.check for p in findings.blocking], "quarantine": findings.quarantine}


def format_findings(findings: Findings, report: Path) -> str:
    blocking = findings.blocking
    lines = [f"Data validation failed (policy {findings.policy}): {findings.anomaly_count} TFDV "
             f"anomal(y/ies), {len(blocking)} blocking problem(s). Full report: "
             f"{report / ANOMALIES_FILE}"]
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
    shown = [f"{f} ({problem.about(f)})" if problem.about(f) else f
             for f in files[:MAX_LISTED_FILES]]
    more = f" (+{len(files) - MAX_LISTED_FILES} more)" if len(files) > MAX_LISTED_FILES else ""
    return f" [files: {', '.join(shown)}{more}]"
