"""Stage `validate`: catch what breaks training before it is trained on.

Over the three splits of ``paths.raw`` (``warmstart.layout.SPLITS``: train, validation, test):

1. The per-image table (``warmstart.validation.table``): real format, mode, size, decodability,
   EXIF orientation; a file whose content was seen before is not decoded again (the per-image
   store, ``warmstart/store.py``; ``reused_images`` / ``computed_images`` in the details).
2. Per-file checks TFDV cannot express (``warmstart.validation.checks``): unreadable files,
   symlinks, decompression bombs, schema domain violations by file, extension mismatches, too
   small, extreme aspect, blank, exact and near duplicates within and across splits (leakage),
   EXIF orientation (a warning: warmstart trains and serves the pixels as stored).
3. Class rules (``warmstart.validation.classes``): the classes are train's; each is in every
   split with at least ``validate.min_images_per_class`` images; imbalance is reported and, past
   ``validate.warn_class_ratio``, a warning.
4. TFDV statistics per split on Apache Beam (``warmstart.validation.stats``), validated against
   the curated, dataset-neutral schema (``warmstart.validation.tfdv_checks``); skew of
   validation and test against train, and drift of every split against the previous version's
   statistics, each against a threshold calibrated to the data (``warmstart.validation.drift``).
5. Policy ``validate.policy``: ``fail`` stops on any problem; ``quarantine`` leaves the bad files
   out of training (raw data is never touched) and lists them with reasons in
   ``quarantine.json``. Problems that excluding files cannot fix (TFDV anomalies of the clean
   data, skew, blocking drift, a missing or too small class, too many bad files) fail either
   way; warnings (advisory) never fail.

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
from warmstart.layout import ANOMALIES_FILE, FACETS_FILE, QUARANTINE_FILE, SPLITS, TRAIN
from warmstart.store import Store
from warmstart.validation.checks import check_quarantined, file_checks
from warmstart.validation.classes import class_balance, class_checks, class_names
from warmstart.validation.drift import compare_splits, comparison_problems
from warmstart.validation.findings import (
    Findings,
    ValidationFailed,
    compared_metrics,
    format_findings,
    mark_quarantined,
    metrics_dict,
    quarantine_manifest,
    quarantine_reasons,
    report_dict,
)
from warmstart.validation.report import log_summary, write_html
from warmstart.validation.schema import load_schema, propose_schema, schema_diff, write_schema
from warmstart.validation.stats import beam_statistics
from warmstart.validation.table import build_table
from warmstart.validation.tfdv_checks import (
    Stats,
    facets_html,
    read_baseline,
    schema_anomalies,
    write_baseline,
    write_stats,
)

logger = logging.getLogger(__name__)


def run_validate(params: Params) -> Path:
    """Validate ``paths.raw``; write the table, classes, reports, metrics and new baseline."""
    started = time.monotonic()
    limits = params.validate
    schema = load_schema(params.path("schema"))
    store = Store.of(params)
    table = build_table(params.path("raw"), SPLITS, limits, store)
    store.evict()
    logger.info("validate: %d images inspected, %d rows reused from the store", store.computed,
                store.reused)
    findings = Findings(limits.policy)
    findings.problems = file_checks(table, params.path("raw"), SPLITS, schema, limits)
    if limits.policy == "quarantine":
        findings.quarantine = quarantine_reasons(findings.problems)
    table = mark_quarantined(table, findings.quarantine)
    clean = table[table["quarantined"] == 0]
    findings.problems += class_checks(clean, SPLITS, limits)
    findings.problems += check_quarantined(len(clean), len(table), limits)
    findings.balance = class_balance(clean, SPLITS)
    tables = {split: clean[clean["split"] == split] for split in SPLITS}
    stats = beam_statistics(tables, limits.beam_options)
    findings.anomalies = schema_anomalies(stats, schema)
    baseline = read_baseline(params.path("validation_baseline"), SPLITS)
    findings.comparisons = compare_splits(stats, tables, baseline, limits)
    findings.problems += comparison_problems(findings.comparisons)
    write_outputs(params, table, findings, stats, time.monotonic() - started, store.counts())
    if not findings.ok:
        raise ValidationFailed(format_findings(findings, params.path("validation_report")))
    write_baseline(params.path("validation_baseline"), stats)
    return write_validated(params.path("validated"), table, class_names(clean, TRAIN))


def write_outputs(params: Params, table: pd.DataFrame, findings: Findings,
                  stats: dict[str, Stats], seconds: float, reuse: dict[str, int]) -> None:
    """The report folder, the HTML report, the details (with ``reuse``: the store's counts) and
    metrics; then the terminal summary."""
    report = params.path("validation_report")
    with atomic_dir(report) as staging:
        for split, anomalies in findings.anomalies.items():
            tfdv.write_anomalies_text(anomalies, str(staging / f"anomalies_{split}.pbtxt"))
        write_stats(staging, stats)
        write_json(staging / ANOMALIES_FILE, report_dict(findings))
        write_json(staging / QUARANTINE_FILE, quarantine_manifest(table))
        write_text(staging / FACETS_FILE, facets_html(stats))
    metrics = metrics_dict(table, findings, seconds)
    write_json(params.path("validate_details"), {**metrics, **reuse})
    write_json(params.path("validate_metrics"), compared_metrics(metrics))
    write_html(params.path("validation_html"), (params.path("raw"), report), table, findings,
               stats, params.validate.max_thumbnails)
    log_summary(table, findings, metrics, report)


def run_schema(params: Params, write: bool) -> int:
    """`warmstart schema`: print the proposal's diff against the committed schema; maybe write."""
    target = params.path("schema")
    proposal = propose_schema(params.path("raw"), TRAIN, params.validate)
    diff = schema_diff(target, proposal)
    sys.stdout.write(diff or f"The proposal equals {target}.\n")
    if write and diff:
        write_schema(target, proposal)
        logger.info("Wrote %s: review it, curate it if needed, and commit it.", target)
    return 0


