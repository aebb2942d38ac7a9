"""Human-readable validation reports: the terminal summary and a self-contained HTML page.

The HTML page (``paths.validation_html``) needs nothing but a browser, offline: the splits with
their class balance, the TFDV statistics of every split rendered from the statistics protos
(numbers, histograms, top values), every skew/drift figure with its threshold and how it was
set, the TFDV anomalies, and every problem (blocking or warning) with its files, their reasons
and thumbnails of what the training decoder sees, embedded as data URIs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import tensorflow as tf
from tensorflow_metadata.proto.v0 import statistics_pb2

from warmstart.atomic import write_text
from warmstart.data.decode import decode_rgb
from warmstart.layout import ANOMALIES_FILE, FACETS_FILE, QUARANTINE_FILE, split_stats_file
from warmstart.reporting.html import THUMB_PIXELS, card, jpeg_uri, page
from warmstart.reporting.html import escape as _e
from warmstart.validation.findings import Findings
from warmstart.validation.table import OK, STAT_COLUMNS

logger = logging.getLogger(__name__)

Stats = statistics_pb2.DatasetFeatureStatisticsList
MEASURE_SIGNS = {"L_INFTY": "L∞", "JENSEN_SHANNON_DIVERGENCE": "JSD"}


def log_summary(table: pd.DataFrame, findings: Findings, metrics: dict, report: Path) -> None:
    """The terminal summary: counts, problems by check, anomalies, where the reports are."""
    verdict = "PASSED" if findings.ok else "FAILED"
    lines = [f"Data validation {verdict} (policy {findings.policy}): {len(table)} files in "
             f"{metrics['seconds']} s ({metrics['images_per_second']} images/s), "
             f"{metrics['quarantined']} quarantined, {findings.anomaly_count} TFDV anomalies"]
    for split, group in table.groupby("split", sort=False):
        labels = group["label"].value_counts().to_dict()
        formats = group["format"].value_counts().to_dict()
        lines.append(f"  {split}: {len(group)} files, labels {labels}, formats {formats}, "
                     f"{_balance_text(findings.balance.get(split))}")
    above = [c for c in findings.comparisons if c.exceeded]
    lines.append(f"  skew/drift: {len(findings.comparisons)} figures, {len(above)} above "
                 "their thresholds (figures, thresholds and how they were set: anomalies.json)")
    for problem in findings.problems:
        flag = "quarantined" if findings.quarantine and problem.quarantine else (
            "warning" if problem.advisory else "BLOCKING" if problem in findings.blocking
            else "")
        lines.append(f"  - {problem.check}: {problem.reason} ({len(problem.files)} file(s)) "
                     f"{flag}".rstrip())
    for split, anomalies in findings.anomalies.items():
        lines += [f"  - [{split}] TFDV {name}: {info.short_description}"
                  for name, info in sorted(anomalies.anomaly_info.items())]
    lines.append(f"  Reports: {report}/ and the HTML report")
    logger.info("\n".join(lines))


def _balance_text(balance: dict | None) -> str:
    if not balance or balance["ratio"] is None:
        return "no classes"
    return (f"class ratio {balance['ratio']:g} (smallest: {balance['smallest_class']}, "
            f"{balance['smallest_count']} images)")


def write_html(path: Path, folders: tuple[Path, Path], table: pd.DataFrame, findings: Findings,
               stats: dict[str, Stats], max_thumbnails: int) -> None:
    """The offline page; ``folders`` are (raw data, report folder) for thumbnails and links."""
    raw, report = folders
    thumbs = thumbnails(raw, table, findings, max_thumbnails)
    verdict = "pass" if findings.ok else "fail"
    parts = [f"<div class='banner {verdict}'>{'PASSED' if findings.ok else 'FAILED'} — policy "
             f"<code>{findings.policy}</code>: {len(table)} files, "
             f"{int(table['quarantined'].sum())} quarantined, {len(findings.blocking)} blocking "
             f"problem(s), {len(findings.warnings)} warning(s), {findings.anomaly_count} TFDV "
             "anomal(y/ies)</div>",
             _splits_table(table, findings.balance), _anomalies_section(findings),
             _problems_section(findings, thumbs), _drift_section(findings), _stats_section(stats),
             _links(os.path.relpath(report, path.parent))]
    write_text(path, page("Data validation", parts))


def _links(folder: str) -> str:
    folder = _e(Path(folder).as_posix())
    facets, stats = f"{folder}/{FACETS_FILE}", _e(split_stats_file("<split>"))
    return (f"<p class='muted'>TFDV's interactive Facets view (needs internet): <a href="
            f"'{facets}'>{facets}</a>. Machine-readable: {folder}/{ANOMALIES_FILE}, "
            f"anomalies_&lt;split&gt;.pbtxt, {stats}, {QUARANTINE_FILE}.</p>")


def thumbnails(raw: Path, table: pd.DataFrame, findings: Findings, limit: int) -> dict[str, str]:
    """data: URIs of what the training decoder makes of each problem file (readable ones)."""
    wanted = {f for p in findings.problems for f in p.files}
    rows = table[table["path"].isin(wanted) & (table["status"] == OK)].head(limit)
    return {path: _thumbnail(raw / path) for path in rows["path"]}


def _thumbnail(path: Path) -> str:
    image = decode_rgb(tf.io.read_file(str(path)))
    small = tf.image.resize(image, (THUMB_PIXELS, THUMB_PIXELS), preserve_aspect_ratio=True,
                            antialias=True)
    jpeg = tf.io.encode_jpeg(tf.cast(tf.round(small), tf.uint8), quality=80).numpy()
    return jpeg_uri(jpeg)


def _splits_table(table: pd.DataFrame, balance: dict[str, dict]) -> str:
    rows = ["<h2>Dataset</h2><table><tr><th>split</th><th>files</th><th>trained on</th>"
            "<th>quarantined</th><th>class balance (largest / smallest)</th><th>labels</th>"
            "<th>formats</th><th>modes</th></tr>"]
    for split, group in table.groupby("split", sort=False):
        rows.append(f"<tr><td>{_e(split)}</td><td>{len(group)}</td>"
                    f"<td>{int((group['quarantined'] == 0).sum())}</td>"
                    f"<td>{int(group['quarantined'].sum())}</td>"
                    f"<td>{_e(_balance_text(balance.get(split)))}</td>"
                    + "".join(f"<td>{_e(_counts(group[c]))}</td>" for c in
                              ("label", "format", "mode")) + "</tr>")
    return "".join(rows) + "</table>"


def _counts(column: pd.Series) -> str:
    return ", ".join(f"{k}: {v}" for k, v in column.value_counts().items())


def _anomalies_section(findings: Findings) -> str:
    rows = [f"<tr><td>{_e(split)}</td><td>{_e(name)}</td><td>{_e(info.short_description)}"
            f"</td><td>{_e(info.description)}</td></tr>"
            for split, anomalies in findings.anomalies.items()
            for name, info in sorted(anomalies.anomaly_info.items())]
    if not rows:
        return "<h2>TFDV anomalies</h2><p>None: the statistics match the schema.</p>"
    return ("<h2>TFDV anomalies</h2><table><tr><th>split</th><th>feature</th><th>anomaly</th>"
            "<th>description</th></tr>" + "".join(rows) + "</table>")


def _problems_section(findings: Findings, thumbs: dict[str, str]) -> str:
    if not findings.problems:
        return "<h2>Problems</h2><p>None.</p>"
    parts = ["<h2>Problems</h2>"]
    for problem in findings.problems:
        state = ("quarantined" if findings.quarantine and problem.quarantine else
                 "warning" if problem.advisory else
                 "blocking" if problem in findings.blocking else "")
        parts.append(f"<h3>{_e(problem.check)} <span class='muted'>({state})</span></h3>"
                     f"<p>{_e(problem.reason)}</p><div class='cards'>")
        parts += [_card(f, problem.about(f), thumbs.get(f),
                        bool(findings.quarantine) and f in problem.quarantine)
                  for f in problem.files]
        parts.append("</div>")
    return "".join(parts)


def _card(path: str, reason: str, thumb: str | None, quarantined: bool) -> str:
    tag = "<span class='tag'>quarantined</span> " if quarantined else ""
    return card(thumb, path, f"{tag}<b>{_e(path)}</b><br>{_e(reason)}")


def _drift_section(findings: Findings) -> str:
    rows = [f"<tr><td>{_e(c.kind)}</td><td>{_e(c.split)}</td><td>{_e(c.feature)}</td>"
            f"<td class='{'bad' if c.exceeded else ''}'>{MEASURE_SIGNS[c.measure]} "
            f"{c.value:.4f}</td><td>{c.threshold:.4f}</td><td>{_e(c.how())}</td>"
            f"<td>{'fails' if c.blocking else 'warns'}</td></tr>"
            for c in findings.comparisons]
    if not rows:
        return "<h2>Skew and drift</h2><p>No comparisons (no thresholds or no baseline).</p>"
    return ("<h2>Skew and drift</h2><p class='muted'>Skew: validation and test vs the training "
            "split. Drift: each split vs the baseline (the last version that passed). "
            "L-infinity for categorical features, approximate Jensen–Shannon divergence for "
            "numeric ones; each threshold is max(floor, factor × the same statistic between "
            "two random samples of this version's data).</p><table><tr><th>kind</th>"
            "<th>split</th><th>feature</th><th>figure</th><th>threshold</th><th>how it was "
            "set</th><th>above the threshold</th></tr>" + "".join(rows) + "</table>")


def _stats_section(stats: dict[str, Stats]) -> str:
    """The TFDV statistics of every split, feature by feature, side by side."""
    by_split = {split: {f.path.step[0] if f.path.step else f.name: f
                        for d in s.datasets[:1] for f in d.features}
                for split, s in stats.items()}
    counts = {split: (s.datasets[0].num_examples if s.datasets else 0)
              for split, s in stats.items()}
    head = "".join(f"<th>{_e(s)} ({counts[s]} images)</th>" for s in stats)
    rows = [f"<tr><th>{_e(name)}</th>" + "".join(
        f"<td>{_feature_cell(by_split[s].get(name))}</td>" for s in stats) + "</tr>"
        for name in STAT_COLUMNS]
    return ("<h2>TFDV statistics</h2><table><tr><th>feature</th>" + head + "</tr>"
            + "".join(rows) + "</table>")


def _feature_cell(feature: statistics_pb2.FeatureNameStatistics | None) -> str:
    if feature is None:
        return "<span class='muted'>no data</span>"
    if feature.HasField("string_stats"):
        strings = feature.string_stats
        top = strings.top_values[:8]
        total = max(sum(v.frequency for v in strings.top_values), 1)
        bars = "".join(f"<div><span class='bar' style='width:{80 * v.frequency / total:.0f}px'>"
                       f"</span> {_e(v.value)}: {v.frequency:g}</div>" for v in top)
        return f"{_missing(strings.common_stats)}unique {strings.unique}{bars}"
    numbers = feature.num_stats
    return (f"{_missing(numbers.common_stats)}mean {numbers.mean:.4g}, std "
            f"{numbers.std_dev:.4g}<br>min {numbers.min:.4g}, median {numbers.median:.4g}, "
            f"max {numbers.max:.4g}<br>{_histogram_svg(numbers)}")


def _missing(common: statistics_pb2.CommonStatistics) -> str:
    missing = common.num_missing
    return f"<span class='bad'>{missing:g} missing</span><br>" if missing else ""


def _histogram_svg(numbers: statistics_pb2.NumericStatistics) -> str:
    standard = [h for h in numbers.histograms
                if h.type == statistics_pb2.Histogram.STANDARD]
    if not standard or not standard[0].buckets:
        return ""
    buckets = standard[0].buckets
    peak = max(b.sample_count for b in buckets) or 1
    width = 200 / len(buckets)
    bars = "".join(f"<rect x='{i * width:.1f}' y='{40 - 40 * b.sample_count / peak:.1f}' "
                   f"width='{width - 1:.1f}' height='{40 * b.sample_count / peak:.1f}' "
                   f"fill='#4a78c2'><title>{b.low_value:.4g}–{b.high_value:.4g}: "
                   f"{b.sample_count:g}</title></rect>" for i, b in enumerate(buckets))
    return f"<svg width='200' height='40' role='img'>{bars}</svg>"

