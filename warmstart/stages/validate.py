"""Stage `validate`: catch what breaks training before it is trained on.

1. The per-image table (``warmstart.validation.table``): real format, mode, size, decodability.
2. Per-file checks TFDV cannot express (``warmstart.validation.checks``): unreadable files,
   symlinks, decompression bombs, schema domain violations by file, extension mismatches, too
   small, extreme aspect, blank, exact and near duplicates within and across splits (leakage).
3. TFDV statistics per split on Apache Beam (``warmstart.validation.stats``), validated against
   the curated schema, with train↔validation skew and drift against the previous version's
   statistics (``warmstart.validation.tfdv_checks``), thresholds from params.
4. Policy ``validate.policy``: ``fail`` stops on any problem; ``quarantine`` leaves the bad files
   out of training (raw data is never touched) and lists them with reasons in
   ``quarantine.json``. Problems that excluding files cannot fix (TFDV anomalies of the clean
   data, drift, skew, class balance, a missing class, too many bad files) fail either way.

The reports are written before the stage fails, so a failure can be inspected.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pandas as pd
import tensorflow_data_validation as tfdv

from warmstart.atomic import atomic_dir, write_json, write_text
from warmstart.config.params import Params
from warmstart.data.validated import write_validated
from warmstart.layout import ANOMALIES_FILE, FACETS_FILE, QUARANTINE_FILE
from warmstart.validation.checks import class_names, dataset_checks, file_checks
from warmstart.validation.findings import (
    Findings,
    ValidationFailed,
    format_findings,
    mark_quarantined,
    metrics_dict,
    quarantine_manifest,
    quarantine_reasons,
    report_dict,
)
from warmstart.validation.report import log_summary, write_html
from warmstart.validation.schema import (
    load_schema,
    propose_schema,
    schema_diff,
    with_comparators,
    write_schema,
)
from warmstart.validation.stats import beam_statistics
from warmstart.validation.table import build_table
from warmstart.validation.tfdv_checks import (
    Stats,
    check_class_balance,
    facets_html,
    read_baseline,
    tfdv_anomalies,
    write_baseline,
    write_stats,
)

logger = logging.getLogger(__name__)


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


def write_outputs(params: Params, table: pd.DataFrame, findings: Findings,
                  stats: dict[str, Stats], seconds: float) -> None:
    """The report folder, the HTML report and the metrics; then the terminal summary."""
    report = params.path("validation_report")
    with atomic_dir(report) as staging:
        for split, anomalies in findings.anomalies.items():
            tfdv.write_anomalies_text(anomalies, str(staging / f"anomalies_{split}.pbtxt"))
        write_stats(staging, stats)
        write_json(staging / ANOMALIES_FILE, report_dict(findings))
        write_json(staging / QUARANTINE_FILE, quarantine_manifest(table))
        write_text(staging / FACETS_FILE, facets_html(stats))
    metrics = metrics_dict(table, findings, seconds)
    write_json(params.path("validate_metrics"), metrics)
    write_html(params.path("validation_html"), (params.path("raw"), report), table, findings,
               stats, params.validate.max_thumbnails)
    log_summary(table, findings, metrics, report)


def run_schema(params: Params, write: bool) -> int:
    """`warmstart schema`: print the proposal's diff against the committed schema; maybe write."""
    target = params.path("schema")
    proposal = propose_schema(params.path("raw"), params.data.train_split,
                              params.validate)
    diff = schema_diff(target, proposal)
    sys.stdout.write(diff or f"The proposal equals {target}.\n")
    if write and diff:
        write_schema(target, proposal)
        logger.info("Wrote %s: review it, curate it if needed, and commit it.", target)
    return 0


