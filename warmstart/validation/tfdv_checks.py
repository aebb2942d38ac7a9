"""TFDV's checks of the statistics against the schema, the drift baseline, the Facets view.

Drift compares this version with the previous version's statistics, kept as a persistent DVC
output (``paths.validation_baseline``): read before the checks, replaced when the stage passes.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from warmstart.atomic import atomic_dir
from warmstart.layout import split_stats_file

logger = logging.getLogger(__name__)

Stats = statistics_pb2.DatasetFeatureStatisticsList
#: TFDV's Facets Overview embedding (``tfdv.utils.display_util.get_statistics_html``), which
#: takes two datasets at most; Facets itself shows any number.
FACETS_TEMPLATE = (
    "<iframe id='facets-iframe' width='100%' height='800px'></iframe><script>"
    "document.getElementById('facets-iframe').srcdoc = '<script src=\"https://cdnjs.cloudflare."
    "com/ajax/libs/webcomponentsjs/1.3.3/webcomponents-lite.js\"><\\/script><link rel=\"import"
    "\" href=\"https://raw.githubusercontent.com/PAIR-code/facets/master/facets-dist/facets-"
    "jupyter.html\"><facets-overview proto-input=\"PROTO\"></facets-overview>';</script>")


def schema_anomalies(stats: dict[str, Stats],
                     schema: schema_pb2.Schema) -> dict[str, anomalies_pb2.Anomalies]:
    """``tfdv.validate_statistics`` of every split against the schema (skew and drift are
    measured apart, with calibrated thresholds: ``warmstart.validation.drift``)."""
    return {split: tfdv.validate_statistics(split_stats, schema)
            for split, split_stats in stats.items()}


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
    """TFDV's own interactive Facets view of every split side by side (loads the Facets library
    from the internet)."""
    combined = Stats()
    for split, split_stats in stats.items():
        dataset = combined.datasets.add()
        if split_stats.datasets:
            dataset.CopyFrom(split_stats.datasets[0])
        dataset.name = split
    proto = base64.b64encode(combined.SerializeToString()).decode()
    return ("<!doctype html><meta charset='utf-8'><title>TFDV statistics (Facets)</title>"
            "<p>Interactive Facets Overview of the TFDV statistics; it loads the Facets "
            "library from the internet. The offline view is validation.html.</p>"
            + FACETS_TEMPLATE.replace("PROTO", proto))
