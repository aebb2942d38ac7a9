"""How the pipeline's cost grows with the data: every stage at N synthetic images, then after +1 %.

    uv run --frozen python bench/scale.py --images 25000     # --images 100000: hours here

Makes N synthetic but realistic photos (JPEG, varied sizes and aspect ratios, textured, one
colour cast and pattern per class, ``--classes`` classes) as ONE folder of class folders, sets up a
git + DVC project on it with ``warmstart init --source`` (the user's path), and runs every stage
from ``ingest`` to ``gate`` as ``dvc repro -s <stage>`` (each its own processes), printing per
stage: wall time, images/s, peak RSS (``os.wait4``: the stage and its children), disk used by its
outputs and by the DVC cache after it. Then it adds ``--grow`` (1 %) new images and runs again,
printing the same table and per stage how many images were computed and how many reused (a
stage reports them in its outputs' info or details files as ``computed_images`` and
``reused_images``: validate, preprocess and features, from the per-image store; one that does not
recomputes all). The last line:

    scale: N=<n> max_rss_mib=<largest stage peak RSS> incremental_features_fraction=<features
    wall time after the growth / from scratch>
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tutorial_vs_warmstart import REPO, SHARED, copy_checkout, measured, uptime  # noqa: E402

STAGES = ["ingest", "validate", "preprocess", "features", "transfer", "finetune", "evaluate",
          "export", "model_card", "gate"]
#: Each stage's outputs, as paths.* keys of params.yaml.
OUTPUTS = {"ingest": ["raw", "ingest_details"],
           "validate": ["validated", "validation_report", "validate_details"],
           "preprocess": ["processed", "preprocess_details"],
           "features": ["features", "prefix", "features_details"],
           "transfer": ["transfer_model"], "finetune": ["finetune_model"],
           "evaluate": ["evaluate_plots"], "export": ["export_model"], "model_card": [],
           "gate": ["promoted_model"]}
PALETTE = np.array([[200, 60, 50], [50, 150, 70], [60, 80, 200], [210, 180, 40],
                    [150, 60, 170], [40, 170, 170], [230, 120, 40], [120, 120, 120],
                    [90, 50, 20], [240, 150, 190]], dtype=np.float32)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--classes", type=int, default=5, help="2 to 10")
    parser.add_argument("--grow", type=float, default=0.01, help="fraction added, then re-run")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--weights", type=Path,
                        default=SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.h5")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/warmstart-scale"))
    parser.add_argument("--through", choices=STAGES[STAGES.index("features"):],
                        default=STAGES[-1],
                        help="the last stage run (both passes), e.g. features: the incremental "
                        "figure without the training stages")
    parser.add_argument("--out", type=Path, default=None, help="Markdown report (default: "
                        "bench/results/scale_<N>.md)")
    args = parser.parse_args()
    if not 2 <= args.classes <= 10:
        parser.error("--classes must be 2 to 10")
    return args


def synthetic_photo(rng: np.random.Generator, label: int) -> Image.Image:
    """A textured image of class ``label``: its colour cast and stripe frequency, random size,
    noise and blobs, so no two are near-duplicates."""
    width, height = int(rng.integers(160, 640)), int(rng.integers(120, 480))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, frequency = rng.uniform(0, np.pi), 0.02 + 0.01 * label
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * frequency + rng.uniform(0, 6))
    low = rng.normal(size=(height // 16 + 1, width // 16 + 1)).repeat(16, 0).repeat(16, 1)
    texture = 0.5 * stripes + 0.5 * low[:height, :width]
    colour = PALETTE[label] * rng.uniform(0.7, 1.1)
    pixels = colour + 50 * texture[..., None] + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


#: Images drawn from one random stream: the photos are the same whatever the process count.
CHUNK = 1000


def write_images(folder: Path, classes: int, start: int, count: int, seed: int) -> None:
    """Images ``start`` .. ``start + count - 1``, in chunks of :data:`CHUNK` over every core."""
    chunks = [(folder, classes, first, min(CHUNK, start + count - first), seed)
              for first in range(start, start + count, CHUNK)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write_chunk, *zip(*chunks, strict=True)))


def write_chunk(folder: Path, classes: int, start: int, count: int, seed: int) -> None:
    rng = np.random.default_rng([seed, start])
    for index in range(start, start + count):
        label = index % classes
        target = folder / f"class_{label}" / f"img_{index:07d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(rng, label).save(target, quality=int(rng.integers(80, 95)))


def make_project(args: argparse.Namespace, source: Path, log: Path) -> Path:
    project = args.workdir / "project"
    copy_checkout(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["base"]["weights"] = str(args.weights.resolve())
    params["preprocess"]["image_size"] = args.image_size
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                [sys.executable, "-m", "warmstart", "init", "--source", str(source)]):
        measured(cmd, project, log)
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")
    return project


def disk_bytes(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def reuse_counts(paths: list[Path]) -> tuple[int, int] | None:
    """(``computed_images``, ``reused_images``) recorded in the stage's output info or details
    files (JSON files, or those in output folders), if the stage records them."""
    files = [p for path in paths
             for p in (sorted(path.glob("*.json")) if path.is_dir() else [path])
             if p.suffix == ".json" and p.is_file()]
    found = [info for p in files if isinstance(info := json.loads(p.read_text()), dict)
             and isinstance(info.get("reused_images"), int)]
    if not found:
        return None
    return (sum(info["computed_images"] for info in found),
            sum(info["reused_images"] for info in found))


def run_stages(project: Path, stages: list[str], images: int, log: Path,
               progress: Path) -> dict[str, dict]:
    """The stages in turn; the rows so far are rewritten to ``progress`` after each (JSON), so
    a run stopped part way still leaves its figures."""
    paths = yaml.safe_load((project / "params.yaml").read_text())["paths"]
    rows = {}
    for stage in stages:
        # The gate may refuse a model of synthetic data: its cost counts, the run goes on.
        result = measured(["dvc", "repro", "-s", stage], project, log, check=stage != "gate")
        outputs = [project / paths[key] for key in OUTPUTS[stage]]
        rows[stage] = {**result, "images_per_second": images / result["seconds"],
                       "output_bytes": disk_bytes(outputs),
                       "cache_bytes": disk_bytes([project / ".dvc" / "cache"]),
                       "reuse": reuse_counts(outputs)}
        progress.write_text(json.dumps(rows, indent=2))
        sys.stderr.write(f"scale: {stage} {result['seconds']:.1f} s, "
                         f"{result['peak_rss_mib']:.0f} MiB\n")
    return rows


def table(title: str, rows: dict[str, dict], images: int) -> list[str]:
    lines = [f"## {title} ({images} images)", "",
             "| stage | wall s | images/s | peak RSS MiB | outputs MiB | DVC cache MiB | "
             "computed / reused |", "|---|---:|---:|---:|---:|---:|---|"]
    for stage, r in rows.items():
        reuse = (f"{r['reuse'][0]} / {r['reuse'][1]}" if r["reuse"] is not None
                 else f"{images} / 0 (recomputes all)")
        name = stage if not r["returncode"] else f"{stage} (failed: see the log)"
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['images_per_second']:.0f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['output_bytes'] / 2**20:.0f} | "
                     f"{r['cache_bytes'] / 2**20:.0f} | {reuse} |")
    return [*lines, f"| **total** | **{sum(r['seconds'] for r in rows.values()):.0f}** | | | | | |",
            ""]


def commit(project: Path, log: Path, message: str) -> None:
    measured(["git", "add", "-A"], project, log)
    subprocess.run(["git", "commit", "-qm", message], cwd=project, check=False,
                   capture_output=True)


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    log, source = args.workdir / "scale.log", args.workdir / "photos"
    log.write_text("")
    shutil.rmtree(source, ignore_errors=True)
    write_images(source, args.classes, 0, args.images, seed=0)
    before, project = uptime(), make_project(args, source, log)
    commit(project, log, "init")
    stages = STAGES[:STAGES.index(args.through) + 1]
    first = run_stages(project, stages, args.images, log, args.workdir / "first.json")
    commit(project, log, "from scratch")
    added = max(1, round(args.images * args.grow))
    write_images(source, args.classes, args.images, added, seed=1)
    grown = run_stages(project, stages, args.images + added, log, args.workdir / "grown.json")
    through = f"; stages ingest to {args.through}" if args.through != STAGES[-1] else ""
    lines = [f"# Scale: {args.images} synthetic images, {args.classes} classes, "
             f"{args.image_size} px, then +{added}{through}", "", f"Load before: `{before}`",
             f"Load after: `{uptime()}`", "", *table("From scratch", first, args.images),
             *table(f"After +{added} images", grown, args.images + added)]
    text = "\n".join(lines)
    out = args.out or REPO / "bench" / "results" / f"scale_{args.images}.md"
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"first": first, "grown": grown}, indent=2))
    fraction = grown["features"]["seconds"] / first["features"]["seconds"]
    peak = max(r["peak_rss_mib"] for r in [*first.values(), *grown.values()])
    sys.stdout.write(text + f"\nscale: N={args.images} max_rss_mib={peak:.0f} "
                     f"incremental_features_fraction={fraction:.3f}\n")


if __name__ == "__main__":
    main()
