"""Prefect artifacts of a pipeline run: stages + metrics (and their `dvc metrics diff` against
the last commit), the validation anomalies table, and the paths of the plots.

Artifacts are keyed (``warmstart-metrics``, ``warmstart-validation``, ``warmstart-plots``),
so the Prefect UI shows each one's history across runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.dvcops import StageOutcome, metrics_diff, metrics_show, params_diff, plots_show
from warmstart.config.params import Params

METRICS_KEY = "warmstart-metrics"
VALIDATION_KEY = "warmstart-validation"
PLOTS_KEY = "warmstart-plots"


def publish_artifacts(root: Path, params: Params, outcomes: list[StageOutcome],
                      title: str) -> None:
    """Create the three artifacts; each only from files the run (or an earlier one) wrote."""
    create_markdown_artifact(metrics_markdown(root, outcomes, title)
                             + candidate_markdown(params.path("evaluate_details")),
                             key=METRICS_KEY,
                             description="Stages, metrics and `dvc metrics diff` vs HEAD")
    publish_validation(params)
    create_markdown_artifact(plots_markdown(root), key=PLOTS_KEY,
                             description="Plot files of this run (`dvc plots show`)")


def metrics_markdown(root: Path, outcomes: list[StageOutcome], title: str) -> str:
    lines = [f"# {title}", "", "## Stages", "", "| stage | result | seconds | why it ran |",
             "|---|---|---|---|"]
    for outcome in outcomes:
        result = "ran" if outcome.status == "ran" else "skipped (up to date)"
        why = "; ".join(outcome.reasons[:3]) + (" ..." if len(outcome.reasons) > 3 else "")
        lines.append(f"| {outcome.stage} | {result} | {outcome.seconds:.1f} | {why} |")
    lines += ["", "## Metrics vs last commit (`dvc metrics diff --all`)", ""]
    lines += diff_table(metrics_diff(root)) or show_table(metrics_show(root))
    changed = params_diff(root)
    if changed:
        lines += ["", "## Params vs last commit (`dvc params diff`)", ""]
        lines += diff_table(changed)
    return "\n".join(lines) + "\n"


def candidate_markdown(evaluation: Path) -> str:
    """Which model `export` ships and the gate judges, and why (chosen on validation)."""
    try:
        candidate = json.loads(evaluation.read_text())["candidate"]
    except (OSError, ValueError, KeyError):
        return "\n## Candidate\n\nNo candidate yet (evaluate has not run).\n"
    return (f"\n## Candidate\n\nThe **{candidate['model']}** model: {candidate['reason']}. "
            "Export ships it; the gate judges it on the test split.\n")


def diff_table(diff: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    rows = [f"| {path} | {name} | {_fmt(v.get('old'))} | {_fmt(v.get('new'))} | "
            f"{_fmt(v.get('diff'))} |"
            for path, values in sorted(diff.items()) for name, v in sorted(values.items())]
    if not rows:
        return []
    return ["| file | key | HEAD | workspace | change |", "|---|---|---|---|---|", *rows]


def show_table(shown: dict) -> list[str]:
    """`dvc metrics show --json` as a table (no commit to diff against yet)."""
    files = shown.get("", {}).get("data", {})
    rows = [f"| {path} | {name} | {_fmt(value)} |"
            for path, entry in sorted(files.items())
            for name, value in sorted(_flatten(entry.get("data", {})).items())]
    return ["No commit to diff against yet; current values:", "", "| file | key | value |",
            "|---|---|---|", *rows]


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def publish_validation(params: Params) -> None:
    report = params.path("validation_report") / "anomalies.json"
    if not report.is_file():
        create_markdown_artifact(f"No validation report at `{report}` (validate did not run).",
                                 key=VALIDATION_KEY)
        return
    rows = anomaly_rows(json.loads(report.read_text()))
    if not rows:
        create_markdown_artifact(f"Validation passed: no anomalies (`{report}`).",
                                 key=VALIDATION_KEY, description="Validation anomalies")
        return
    create_table_artifact(rows, key=VALIDATION_KEY,
                          description=f"Validation anomalies ({report})")


def anomaly_rows(report: dict) -> list[dict[str, str]]:
    """One row per TFDV anomaly and per structural/file problem of anomalies.json."""
    rows = [{"where": split, "check": f"TFDV: {name}", "severity": info.get("severity", ""),
             "description": info.get("description", ""), "files": ""}
            for split, anomalies in sorted(report.get("tfdv_anomalies", {}).items())
            for name, info in sorted(anomalies.items())]
    for problem in report.get("problems", []):
        files = problem.get("files", [])
        shown = ", ".join(files[:10]) + (f" (+{len(files) - 10} more)" if len(files) > 10 else "")
        rows.append({"where": "files", "check": problem.get("check", ""), "severity": "ERROR",
                     "description": problem.get("reason", ""), "files": shown})
    return rows


def plots_markdown(root: Path) -> str:
    lines = ["# Plots", "", "Render them all with `dvc plots show` (offline: the page template "
             "inlines Vega; or compare with a commit: `dvc plots diff HEAD`) in the project "
             "folder.", ""]
    for name in plot_names(root):
        path = root / name
        lines.append(f"- [{name}]({path.as_uri()})" if path.is_file() else f"- {name}")
    return "\n".join(lines) + "\n"


def plot_names(root: Path) -> list[str]:
    """Every plot `dvc plots show` renders: the titles of dvc.yaml's plot definitions (they
    read DVCLive's files) and any plot file a stage declares."""
    return sorted(plots_show(root).get("data", {}))
