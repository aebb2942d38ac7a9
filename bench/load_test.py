"""Load test: N synthetic images through ingest, validate and preprocess, with peak memory.

Each stage runs in its own child process (``python -m warmstart <stage>``) so wall time and peak
RSS are per stage. Usage::

    uv run --frozen python bench/load_test.py --images 50000 --workdir /tmp/load50k
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "validate", "preprocess")


def make_images(root: Path, count: int, size: int = 64) -> None:
    """count images split 80/20 into train/validation, two classes, distinct noise each."""
    rng = np.random.default_rng(0)
    for index in range(count):
        split = "train" if index % 5 else "validation"
        label = ("cats", "dogs")[index % 2]
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{index:06d}.jpg", quality=85)


def run_stage(work: Path, stage: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one stage in a fresh child process (GNU time)."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M", sys.executable, "-m",
                           "warmstart", "--params", str(work / "params.yaml"), stage],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{stage} failed:\n{done.stderr[-3000:]}")
    peak_kb = int(done.stderr.rsplit("maxrss_kb=", 1)[1].split()[0])
    return seconds, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/warmstart-load"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    source = args.workdir / "source"
    start = time.perf_counter()
    make_images(source, args.images)
    print(f"generated {args.images} images in {time.perf_counter() - start:.0f} s")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(source)
    params["base"]["weights"] = "none"
    (args.workdir / "schema").mkdir(parents=True)
    shutil.copy(REPO / "schema" / "schema.pbtxt", args.workdir / "schema")
    (args.workdir / "params.yaml").write_text(yaml.safe_dump(params))
    print("| stage | wall s | images/s | peak RSS MiB |\n|---|---|---|---|")
    for stage in STAGES:
        seconds, rss = run_stage(args.workdir, stage)
        print(f"| {stage} | {seconds:.1f} | {args.images / seconds:.0f} | {rss:.0f} |")
    print(f"(cpu count {os.cpu_count()})")


if __name__ == "__main__":
    main()
