"""The checks TFDV makes on the statistics: schema, train↔validation skew, drift, class balance.

Drift compares this version with the previous version's statistics, kept as a persistent DVC
output (``paths.validation_baseline``): read before the checks, replaced when the stage passes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow_data_validation as tfdv
from tensorflow_data_validation.utils import stats_util
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from warmstart.atomic import atomic_dir
from warmstart.layout import split_stats_file
from warmstart.validation.checks import Problem

logger = logging.getLogger(__name__)

Stats = statistics_pb2.DatasetFeatureStatisticsList


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
    found = {s: tfdv.load_stats_binary(str(folder / split_stats_file(s))) for s in splits
             if (folder / split_stats_file(s)).is_file()}
    if found:
        logger.info("Drift: comparing with the baseline statistics in %s", folder)
    else:
        logger.info("Drift: no baseline in %s yet; this version becomes the baseline", folder)
    return found


def write_baseline(folder: Path, stats: dict[str, Stats]) -> None:
    with atomic_dir(folder) as staging:
        write_stats(staging, stats)


def write_stats(folder: Path, stats: dict[str, Stats]) -> None:
    """One ``stats_<split>.pb`` per split (binary DatasetFeatureStatisticsList)."""
    for split, split_stats in stats.items():
        (folder / split_stats_file(split)).write_bytes(split_stats.SerializeToString())


def facets_html(stats: dict[str, Stats]) -> str:
    """TFDV's own interactive Facets view (loads the Facets library from the internet)."""
    (lhs_name, lhs), (rhs_name, rhs) = stats.items()
    body = tfdv.utils.display_util.get_statistics_html(lhs, rhs, lhs_name, rhs_name)
    return ("<!doctype html><meta charset='utf-8'><title>TFDV statistics (Facets)</title>"
            "<p>Interactive Facets Overview of the TFDV statistics; it loads the Facets "
            "library from the internet. The offline view is validation.html.</p>" + body)
