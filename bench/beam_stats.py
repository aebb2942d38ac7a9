"""TFDV statistics of the image table at N images: Beam's in-memory runner vs multi-processing.

    uv run --frozen python bench/beam_stats.py --images 100000

The `validate` stage computes its TFDV statistics over the per-image metadata table (one row
per image: label, format, size, aspect, brightness, contrast ...; ``warmstart.validation.table``),
not over pixels, so the runner's cost at N images can be measured on a synthetic table of N
realistic rows without decoding N images. The table is split 80/10/10 like a class-folder dataset,
and ``warmstart.validation.stats.beam_statistics`` (the stage's own function) runs once per
``--runs`` and runner with each ``validate.beam_options`` string below; the statistics of every
runner must agree: the same features, counts and categories, numeric figures within
floating-point summation order and TFDV's approximate quantile sketches (merged in another order
across workers), reported as the largest relative difference. Prints seconds per runner and writes
``bench/results/beam_stats_<N>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from google.protobuf import json_format

from warmstart.layout import SPLITS
from warmstart.validation.stats import Stats, beam_statistics

RESULTS = Path(__file__).resolve().parent / "results"
RUNNERS = {
    "in_memory": "--runner=FnApiRunner --direct_running_mode=in_memory --direct_num_workers=1",
    "multi_processing_2": "--runner=FnApiRunner --direct_running_mode=multi_processing "
                          "--direct_num_workers=2",
}


def synthetic_table(images: int, classes: int, seed: int) -> dict[str, pd.DataFrame]:
    """``{split: table}`` with the statistics columns of real photos (JPEG, varied sizes)."""
    rng = np.random.default_rng(seed)
    width = rng.integers(200, 1200, images)
    height = (width / rng.uniform(0.6, 1.8, images)).astype(int)
    table = pd.DataFrame({
        "label": [f"class_{i}" for i in rng.integers(0, classes, images)],
        "format": rng.choice(["jpeg", "png"], images, p=[0.97, 0.03]),
        "extension": rng.choice([".jpg", ".jpeg", ".png"], images, p=[0.9, 0.07, 0.03]),
        "mode": rng.choice(["RGB", "L"], images, p=[0.99, 0.01]),
        "width": width, "height": height, "aspect": np.round(width / height, 4),
        "channels": 3, "file_bytes": rng.integers(20_000, 400_000, images), "decodable": 1,
        "brightness": np.round(rng.uniform(40, 200, images), 3),
        "contrast": np.round(rng.uniform(20, 80, images), 3)})
    split = rng.choice(list(SPLITS), images, p=[0.8, 0.1, 0.1])
    return {name: table[split == name].reset_index(drop=True) for name in SPLITS}


def timed(tables: dict[str, pd.DataFrame], options: str, runs: int
          ) -> tuple[list[float], dict[str, Stats]]:
    seconds, stats = [], {}
    for _ in range(runs):
        start = time.perf_counter()
        stats = beam_statistics(tables, options)
        seconds.append(round(time.perf_counter() - start, 2))
    return seconds, stats


def figures(stats: dict[str, Stats]) -> dict:
    """The statistics as JSON, for comparing runners: each split's features by their path
    (their order in the list differs between runners; the figures must not)."""
    result = {}
    for name, value in stats.items():
        (dataset,) = json_format.MessageToDict(value)["datasets"]
        features = {"/".join(f.pop("path")["step"]): f for f in dataset.pop("features")}
        result[name] = {**dataset, "features": features}
    return result


def leaves(tree: dict | list, prefix: str = "") -> dict[str, object]:
    """``{"train/features/width/numStats/mean": 698.67, ...}``: every figure by its path."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    found: dict[str, object] = {}
    for key, value in items:
        path = f"{prefix}/{key}"
        found.update(leaves(value, path) if isinstance(value, dict | list) else {path: value})
    return found


def largest_difference(reference: dict[str, object], other: dict[str, object]) -> float:
    """The largest relative difference of a numeric figure; a figure present in one only, or
    a different count or category, is an error (the runners must compute the same)."""
    if reference.keys() != other.keys():
        differing = sorted(reference.keys() ^ other.keys())
        raise SystemExit(f"runners differ in figures: {differing[:5]}")
    largest = 0.0
    for path, value in reference.items():
        if isinstance(value, float) and isinstance(other[path], float):
            largest = max(largest, abs(value - other[path]) / max(abs(value), 1e-12))
        elif value != other[path]:
            raise SystemExit(f"runners differ at {path}: {value!r} vs {other[path]!r}")
    return largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tables = synthetic_table(args.images, args.classes, seed=0)
    results, reference = {}, None
    for name, options in RUNNERS.items():
        seconds, stats = timed(tables, options, args.runs)
        reference = reference or leaves(figures(stats))
        difference = largest_difference(reference, leaves(figures(stats)))
        results[name] = {"options": options, "seconds": seconds,
                         "median_s": statistics.median(seconds),
                         "max_relative_difference": difference}
        print(f"{name:<20} median {results[name]['median_s']:>6.2f} s  runs {seconds}  "
              f"largest relative difference from in_memory: {difference:.2g}", flush=True)
    record = {"images": args.images, "rows": {k: len(v) for k, v in tables.items()},
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "runners": results}
    stem = RESULTS / f"beam_stats_{args.images}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(record))


def markdown(record: dict) -> str:
    lines = [f"# TFDV statistics of the image table at {record['images']:,} images",
             "", f"`bench/beam_stats.py --images {record['images']}`: rows per split "
             f"{record['rows']}, {record['cpus']} CPUs, load average at the end "
             f"{', '.join(f'{x:.2f}' for x in record['load_average'])}.", "",
             "| runner (`validate.beam_options`) | median s | runs (s) | largest relative "
             "difference from in_memory |",
             "|---|---|---|---|"]
    for name, entry in record["runners"].items():
        lines.append(f"| {name}: `{entry['options']}` | {entry['median_s']:.2f} | "
                     f"{entry['seconds']} | {entry['max_relative_difference']:.2g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
