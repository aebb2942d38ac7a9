"""Peak memory of writing and streaming a cache of N rows: the shards vs the whole cache in RAM.

    uv run --frozen python bench/cache_memory.py --rows 200000 --row-kib 8

Writes a synthetic float16 cache of ``--rows`` rows of ``--row-kib`` KiB (8 KiB: one image's
prefix at ``fine_tune_at: 72`` and 128 px) as the ``features`` stage does (``ShardWriter``, one
batch at a time), then reads one shuffled epoch of batches as ``finetune`` does
(``cached_batches``: per-batch ``os.preadv``), then the same epoch the way format 1 did (the
whole array in memory as a ``tf.constant``, rows gathered by index). Each step runs in its own
process; its peak RSS comes from ``os.wait4``. Prints one line per step and a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH, SEED = 128, 1337


def write(folder: Path, rows: int, width: int) -> None:
    from warmstart.modeling.array_shards import ArraySpec, CacheWriter, ShardWriter

    spec = ArraySpec.sized("boundary_0", rows, (width,), "float16")
    rng = np.random.default_rng(0)
    with CacheWriter([ShardWriter(folder, "train", spec)]) as writer:
        for start in range(0, rows, BATCH):
            writer.append([rng.standard_normal((min(BATCH, rows - start), width), np.float32)])


def stream(folder: Path, rows: int, width: int) -> None:
    from warmstart.modeling.array_shards import ArraySpec, ShardedArray
    from warmstart.modeling.cache_dataset import cached_batches

    array = ShardedArray(folder, "train", ArraySpec.sized("boundary_0", rows, (width,),
                                                          "float16"))
    for _ in cached_batches([array], np.zeros(rows, np.int64), BATCH, SEED):
        pass


def in_memory(folder: Path, rows: int, width: int) -> None:
    import tensorflow as tf

    from warmstart.modeling.array_shards import ArraySpec, ShardedArray

    values = tf.constant(ShardedArray(folder, "train", ArraySpec.sized(
        "boundary_0", rows, (width,), "float16")).read())
    order = tf.data.Dataset.range(rows).shuffle(rows, seed=SEED, reshuffle_each_iteration=True)
    for _ in order.batch(BATCH).map(lambda i: tf.cast(tf.gather(values, i), tf.float32)):
        pass


STEPS = {"write (format 2: shards, batch by batch)": write,
         "one epoch streamed (format 2: preadv per batch)": stream,
         "one epoch in memory (format 1: tf.constant)": in_memory}


def measure(step: str, args: argparse.Namespace, folder: Path) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of ``step`` in a fresh process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--rows", str(args.rows), "--row-kib",
                              str(args.row_kib), "--step", step, "--folder", str(folder)])
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{step} failed")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--row-kib", type=float, default=8)
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    width = int(args.row_kib * 1024 / 2)
    if args.step:
        STEPS[args.step](args.folder, args.rows, width)
        return
    size = args.rows * width * 2 / 2**20
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as folder:
        for step in STEPS:
            seconds, rss = measure(step, args, Path(folder))
            rows.append(f"| {step} | {seconds:.1f} | {rss:,.0f} |")
            print(f"cache_memory: rows={args.rows} cache_mib={size:.0f} step={step!r} "
                  f"seconds={seconds:.1f} peak_rss_mib={rss:.0f}", flush=True)
    print(f"\n{args.rows:,} rows x {args.row_kib:g} KiB = {size:,.0f} MiB (float16)\n\n"
          "| step | seconds | peak RSS (MiB) |\n|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
