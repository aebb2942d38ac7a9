"""Skew and drift: how far a split's statistics are from another's, against a calibrated threshold.

Skew compares validation and test with train (one version); drift compares each split with the
same split of the baseline (the last version that passed, ``paths.validation_baseline``). TFDV's
own comparators measure: the L-infinity distance of the value frequencies for categorical
features, the approximate Jensen-Shannon divergence (JSD) of the histograms for numeric ones.

Two samples of one distribution do not measure 0, and how far from 0 depends on the data and the
sample sizes. The approximate JSD spreads each histogram bucket evenly over the common buckets
of both: one new outlier that stretches the range (the tutorial's training widths: at most 500
pixels with 750 images per class, 1,023 with 1,000) moves the spike at 500 into a wider bucket
and measures 0.16 between two versions drawn from the same images. So every threshold is
calibrated to the data: the noise is the same statistic between two disjoint random samples of
the data itself (the current split for drift, train for skew), each as large as the smaller side
of the real comparison and at most half the data, averaged over ``validate.noise_samples``
seeded draws; the threshold is ``max(floor, validate.noise_factor x noise)``. The floors are
``validate.{skew,drift}_{linf,jsd}`` (null: no comparison). A figure at or below its floor passes
whatever the noise, so the noise is only estimated for the features above their floor. The
samples' statistics come from TFDV's in-memory path (``table_statistics``): the same figures as
the Beam pipeline, ~40 ms a sample for all features (~11 ms for one numeric feature, ~3 ms for a
categorical one) against ~1 s a sample added to the Beam pipeline.

On the tutorial data (``tests/test_drift_realdata.py``), 1,000 training images per class after
750 measure a width JSD of 0.160 against a noise of 0.164 (threshold 0.49): it passes. Real
shifts stand above their thresholds: every image at half size, width 0.68 (threshold 0.50) and
height 0.63 (0.33); 60 % of the training dogs gone, label L-infinity 0.214 (noise 0.014, so the
floor 0.1 is the threshold).

Skew above its threshold fails the stage (the splits of one version disagree, so validation and
test do not measure what training learnt). Drift fails for the features of
``validate.drift_blocking`` and is a warning (advisory) for the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import statistics_pb2

from warmstart.config.params import ValidateParams
from warmstart.layout import SPLITS, TRAIN
from warmstart.validation.checks import Problem
from warmstart.validation.stats import column_schema, table_statistics
from warmstart.validation.table import CATEGORICAL_COLUMNS, STAT_COLUMNS

Stats = statistics_pb2.DatasetFeatureStatisticsList
SKEW, DRIFT = "skew", "drift"
#: Seed of the random samples: the same data gives the same thresholds.
NOISE_SEED = 0
#: A sample of one image is no distribution: below this the threshold is the floor alone.
MIN_NOISE_SAMPLE = 2
MEASURES = {"L_INFTY": "L-infinity distance",
            "JENSEN_SHANNON_DIVERGENCE": "approximate Jensen-Shannon divergence"}


@dataclass(frozen=True)
class Comparison:
    """One feature of one comparison: the figure, its threshold and how the threshold was set.
    ``noise`` is None when the figure is at or below its floor (it passes whatever the noise)
    or the data was too small to draw two samples of ``MIN_NOISE_SAMPLE`` images."""

    kind: str
    split: str
    feature: str
    measure: str
    value: float
    floor: float
    noise: float | None
    factor: float
    sample_size: int
    blocking: bool

    @property
    def threshold(self) -> float:
        return self.floor if self.noise is None else max(self.floor, self.factor * self.noise)

    @property
    def exceeded(self) -> bool:
        return self.value > self.threshold

    def how(self) -> str:
        key = f"validate.{self.kind}_{'linf' if self.measure == 'L_INFTY' else 'jsd'}"
        if self.noise is None and self.value <= self.floor:
            return f"the floor {key}={self.floor:g} (the figure is within it: noise not needed)"
        if self.noise is None:
            return (f"the floor {key}={self.floor:g} (fewer than {MIN_NOISE_SAMPLE} images per "
                    "sample: no noise estimate)")
        pool = TRAIN if self.kind == SKEW else self.split
        return (f"max({key}={self.floor:g}, validate.noise_factor={self.factor:g} x noise "
                f"{self.noise:.4g}: the same statistic between two random samples of "
                f"{self.sample_size} '{pool}' images of this version)")

    def description(self) -> str:
        between = ("between current and previous (the baseline)" if self.kind == DRIFT else
                   f"between '{TRAIN}' and '{self.split}'")
        verdict = "above" if self.exceeded else "within"
        return (f"[{self.split}] {self.feature}: {MEASURES[self.measure]} {between} "
                f"{self.value:.4g}, {verdict} the threshold {self.threshold:.4g} = {self.how()}")

    def as_dict(self) -> dict:
        return {"type": self.measure, "value": round(self.value, 6),
                "threshold": round(self.threshold, 6), "floor": self.floor,
                "noise": None if self.noise is None else round(self.noise, 6),
                "noise_factor": self.factor, "sample_size": self.sample_size,
                "how": self.how(), "exceeded": self.exceeded, "blocking": self.blocking}


def compare_splits(stats: dict[str, Stats], tables: dict[str, pd.DataFrame],
                   baseline: dict[str, Stats], limits: ValidateParams) -> list[Comparison]:
    """Skew of validation and test against train; drift of every split against its baseline."""
    found = []
    for split in SPLITS:
        if split != TRAIN:
            found += compare(SKEW, split, (stats[split], stats[TRAIN]), tables[TRAIN], limits)
        if split in baseline:
            found += compare(DRIFT, split, (stats[split], baseline[split]), tables[split],
                             limits)
    return found


def compare(kind: str, split: str, pair: tuple[Stats, Stats], pool: pd.DataFrame,
            limits: ValidateParams) -> list[Comparison]:
    """The features of one comparison (``pair``: current, reference); the noise is drawn from
    ``pool``, the rows the current side's population is judged by."""
    floors = feature_floors(kind, limits)
    measured = distances(*pair, floors)
    above = [f for f, (_, value) in measured.items() if value > floors[f]]
    size = min(*(_count(s) for s in pair), len(pool) // 2)
    noise = (noise_levels(pool, size, sorted(above), limits.noise_samples)
             if above and size >= MIN_NOISE_SAMPLE else {})
    return [Comparison(kind, split, feature, measure, value, floors[feature], noise.get(feature),
                       limits.noise_factor, size,
                       blocking=kind == SKEW or feature in limits.drift_blocking)
            for feature, (measure, value) in sorted(measured.items())]


def feature_floors(kind: str, limits: ValidateParams) -> dict[str, float]:
    """feature -> the floor of its threshold, for the features this kind compares."""
    linf, jsd = ((limits.skew_linf, limits.skew_jsd) if kind == SKEW else
                 (limits.drift_linf, limits.drift_jsd))
    floors = {f: linf if f in CATEGORICAL_COLUMNS else jsd for f in STAT_COLUMNS}
    return {f: floor for f, floor in floors.items() if floor is not None}


def distances(current: Stats, reference: Stats,
              features: Iterable[str]) -> dict[str, tuple[str, float]]:
    """feature -> (measure, value): TFDV's drift comparator of each feature, nothing else."""
    schema = column_schema(features)
    for feature in schema.feature:
        comparator = feature.drift_comparator
        norm = (comparator.infinity_norm if feature.name in CATEGORICAL_COLUMNS else
                comparator.jensen_shannon_divergence)
        norm.threshold = 1.0  # the largest value of both: measured, never an anomaly here
    anomalies = tfdv.validate_statistics(current, schema, previous_statistics=reference)
    return {".".join(info.path.step): (m.Type.Name(m.type), m.value)
            for info in anomalies.drift_skew_info for m in info.drift_measurements}


def noise_levels(pool: pd.DataFrame, size: int, features: list[str],
                 draws: int) -> dict[str, float]:
    """feature -> mean distance between two disjoint random samples of ``size`` rows."""
    rng = np.random.default_rng(NOISE_SEED)
    totals: dict[str, float] = {}
    for _ in range(draws):
        order = rng.permutation(len(pool))
        first, second = (table_statistics(pool.iloc[order[i * size:(i + 1) * size]], features)
                         for i in (0, 1))
        for feature, (_, value) in distances(first, second, features).items():
            totals[feature] = totals.get(feature, 0.0) + value / draws
    return totals


def comparison_problems(comparisons: list[Comparison]) -> list[Problem]:
    """A problem per comparison above its threshold: blocking, or a warning (advisory)."""
    hint = {SKEW: "the splits disagree: check how the data was split",
            DRIFT: "if the change is intended, accept it once with `dvc exp run -S "
                   "validate.drift_linf=1 -S validate.drift_jsd=1`"}
    return [Problem(c.kind, f"{c.description()}; {hint[c.kind]}", advisory=not c.blocking)
            for c in comparisons if c.exceeded]


def comparisons_dict(comparisons: list[Comparison]) -> dict:
    """split -> feature -> kind -> the comparison (anomalies.json ``drift_skew``)."""
    result: dict = {}
    for c in comparisons:
        result.setdefault(c.split, {}).setdefault(c.feature, {})[c.kind] = c.as_dict()
    return result


def _count(stats: Stats) -> int:
    return int(stats.datasets[0].num_examples) if stats.datasets else 0
