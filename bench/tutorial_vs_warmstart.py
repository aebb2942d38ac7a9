"""Side by side on the same data, weights, image size and machine: tutorial recipe vs warmstart.

    uv run --frozen python bench/tutorial_vs_warmstart.py            # all, ~15 min on 2 idle cores

Parts (each can be skipped, so the benchmark can run piecewise):

1. baseline   ``bench/tutorial_baseline.py`` (Keras 2 ``tf_keras``, ImageDataGenerator, full forward
              pass every epoch), in its own process: wall time per phase, peak RSS, accuracy.
2. stages     warmstart's stages one by one (``python -m warmstart <stage>``, each its own process)
              in a scratch project: wall time and peak RSS per stage, accuracy from its metrics.
3. repro      warmstart's ``dvc repro evaluate`` (ingest ... evaluate, i.e. the whole training
              pipeline without later stages such as export) in a fresh git + DVC project (the figure
              the acceptance compares with the baseline's transfer + fine-tune).
4. scaling    transfer and finetune wall time at 1x, 2x, 4x the epochs, and at image size 160;
              finetune with a float32 instead of float16 prefix cache (accuracy and cache size).

Every child's peak RSS comes from ``os.wait4`` (its own rusage, including its children). The
Markdown report goes to ``bench/results/`` (and stdout), with ``uptime`` load averages before and
after: other processes on the machine distort timings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
STAGES = ["ingest", "validate", "preprocess", "features", "transfer", "finetune", "evaluate"]
TRAINING = ["features", "transfer", "finetune"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path,
                        default=SHARED / "datasets" / "cats_and_dogs_filtered.zip")
    parser.add_argument("--weights", type=Path,
                        default=SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.h5")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/warmstart-bench"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "latest.md")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=50, help="transfer epochs (both sides)")
    parser.add_argument("--fine-tune-epochs", type=int, default=5)
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply both epoch counts (e.g. 0.1 for a quick smoke run)")
    parser.add_argument("--baseline-batch", type=int, default=32,
                        help="batch size of the tutorial recipe (the tutorial uses 32)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-stages", action="store_true")
    parser.add_argument("--skip-repro", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    return parser.parse_args()


def measured(cmd: list[str], cwd: Path, log: Path) -> dict:
    """Run ``cmd``; return wall seconds and peak RSS (MiB) of it and its descendants."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return {"seconds": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ---- workspaces -----------------------------------------------------------------------------

def make_project(target: Path, args: argparse.Namespace, **overrides: dict) -> Path:
    """A scratch warmstart project: this repo's code, dvc.yaml, schema and params, overridden."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", target)
    shutil.copytree(REPO / "warmstart", target / "warmstart",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "schema", target / "schema")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(args.dataset.resolve())
    params["base"]["weights"] = str(args.weights.resolve())
    params["preprocess"]["image_size"] = args.image_size
    params["transfer"]["epochs"] = args.transfer_epochs
    params["finetune"]["epochs"] = args.finetune_epochs
    for section, values in overrides.items():
        params[section].update(values)
    write_params(target, params)
    return target


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def set_param(project: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section][key] = value
    write_params(project, params)


def metric(project: Path, name: str, split: str = "validation") -> float:
    """A training stage's last-epoch accuracy on ``split`` (metrics/<stage>.json)."""
    return json.loads((project / "metrics" / f"{name}.json").read_text())[split]["accuracy"]


def run_stage(project: Path, stage: str, log: Path) -> dict:
    return measured([sys.executable, "-m", "warmstart", stage], project, log)


# ---- parts --------------------------------------------------------------------------------

def baseline(args: argparse.Namespace, log: Path) -> dict:
    data = args.workdir / "extracted"
    if not (data / "train").is_dir():
        shutil.rmtree(data, ignore_errors=True)
        with zipfile.ZipFile(args.dataset) as archive:
            archive.extractall(data)
        inner = next(p for p in data.iterdir() if p.is_dir())
        for child in inner.iterdir():
            child.rename(data / child.name)
    summary = args.workdir / "baseline.json"
    cmd = [sys.executable, str(REPO / "bench" / "tutorial_baseline.py"), "--data", str(data),
           "--weights", str(args.weights.resolve()), "--json", str(summary),
           "--image-size", str(args.image_size), "--batch-size", str(args.baseline_batch),
           "--epochs", str(args.transfer_epochs),
           "--fine-tune-epochs", str(args.finetune_epochs)]
    result = measured(cmd, REPO, log)
    return {**json.loads(summary.read_text()), **result}


def stages(args: argparse.Namespace, log: Path) -> dict:
    project = make_project(args.workdir / "stages", args)
    times = {stage: run_stage(project, stage, log) for stage in STAGES}
    prefix_info = json.loads((project / "data" / "prefix" / "prefix.json").read_text())
    return {"project": str(project), "stages": times,
            "transfer_val_accuracy": metric(project, "transfer"),
            "finetune_val_accuracy": metric(project, "finetune"),
            "prefix_bytes": sum(s["bytes"] for s in prefix_info["splits"].values()),
            "prefix_splits": {name: f"{s['dtype']} {s['bytes'] / 2**20:.0f} MiB"
                              for name, s in prefix_info["splits"].items()},
            "prefix_boundary": prefix_info["boundary"]}


def repro(args: argparse.Namespace, log: Path) -> dict:
    project = make_project(args.workdir / "repro", args)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        measured(cmd, project, log)
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")  # the repo's DVC config
    result = measured(["dvc", "repro", "evaluate"], project, log)
    return {**result, "transfer_val_accuracy": metric(project, "transfer"),
            "finetune_val_accuracy": metric(project, "finetune")}


def scaling(args: argparse.Namespace, log: Path, stage_project: Path | None) -> dict:
    project = stage_project or Path(stages(args, log)["project"])
    rows = {}
    for factor in (1, 2, 4):
        set_param(project, "transfer", "epochs", args.transfer_epochs * factor)
        set_param(project, "finetune", "epochs", args.finetune_epochs * factor)
        rows[f"{factor}x"] = {s: run_stage(project, s, log)["seconds"]
                              for s in ("transfer", "finetune")}
    set_param(project, "transfer", "epochs", args.transfer_epochs)
    set_param(project, "finetune", "epochs", args.finetune_epochs)
    run_stage(project, "transfer", log)
    set_param(project, "finetune", "cache_dtype", "float32")
    float32 = {s: run_stage(project, s, log)["seconds"] for s in ("features", "finetune")}
    info = json.loads((project / "data" / "prefix" / "prefix.json").read_text())
    float32.update(val_accuracy=metric(project, "finetune"),
                   bytes=sum(s["bytes"] for s in info["splits"].values()))
    set_param(project, "finetune", "cache_dtype", "float16")
    big = make_project(args.workdir / "size160", args, preprocess={"image_size": 160})
    for folder in ("raw", "validated"):
        shutil.copytree(project / "data" / folder, big / "data" / folder)
    size160 = {s: run_stage(big, s, log)["seconds"]
               for s in ("preprocess", "features", "transfer", "finetune")}
    size160.update(transfer_val_accuracy=metric(big, "transfer"),
                   finetune_val_accuracy=metric(big, "finetune"))
    return {"epochs": rows, "float32": float32, "size160": size160}


# ---- report -------------------------------------------------------------------------------

def report(args: argparse.Namespace, results: dict, load: tuple[str, str]) -> str:
    lines = [f"# Tutorial recipe vs warmstart ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Data `{args.dataset.name}`, weights `{args.weights.name}`, {args.image_size} px, "
             f"transfer {args.transfer_epochs} + fine-tune {args.finetune_epochs} epochs "
             f"(from layer 100), {os.cpu_count()} CPU cores.", "",
             f"Load before: `{load[0]}`", f"Load after: `{load[1]}`", ""]
    base, staged, whole = (results.get(k) for k in ("baseline", "stages", "repro"))
    if base:
        lines += baseline_table(args, base)
    if staged:
        lines += stage_table(args, staged)
    if whole:
        lines += ["", "**warmstart whole `dvc repro evaluate`** (fresh project, ingest ... "
                  f"evaluate): {whole['seconds']:.0f} s, peak RSS {whole['peak_rss_mib']:.0f} MiB, "
                  f"val acc transfer {whole['transfer_val_accuracy']:.3f}, "
                  f"fine-tune {whole['finetune_val_accuracy']:.3f}"]
    if base and (whole or staged):
        lines += ratio_lines(base, staged, whole)
    if results.get("scaling"):
        lines += scaling_table(results["scaling"], staged, args)
    return "\n".join(lines) + "\n"


def baseline_table(args: argparse.Namespace, base: dict) -> list[str]:
    train = base["train_images"]
    total = base["transfer_seconds"] + base["finetune_seconds"]
    return ["## Tutorial recipe (tf_keras, ImageDataGenerator, batch "
            f"{args.baseline_batch})", "",
            "| phase | wall s | train images/s | val acc |", "|---|---:|---:|---:|",
            f"| transfer ({args.transfer_epochs} ep) | {base['transfer_seconds']:.0f} | "
            f"{train * args.transfer_epochs / base['transfer_seconds']:.0f} | "
            f"{base['transfer_val_accuracy']:.3f} |",
            f"| fine-tune ({args.finetune_epochs} ep) | {base['finetune_seconds']:.0f} | "
            f"{train * args.finetune_epochs / max(base['finetune_seconds'], 1e-9):.0f} | "
            f"{base['finetune_val_accuracy']:.3f} |",
            f"| **transfer + fine-tune** | **{total:.0f}** | | |",
            f"| process total (incl. start-up) | {base['seconds']:.0f} | | |", "",
            f"Peak RSS: {base['peak_rss_mib']:.0f} MiB.", ""]


def stage_table(args: argparse.Namespace, staged: dict) -> list[str]:
    train = 2000
    lines = ["## warmstart, stage by stage (each `python -m warmstart <stage>`)", "",
             "| stage | wall s | train images/s | peak RSS MiB |", "|---|---:|---:|---:|"]
    epochs = {"transfer": args.transfer_epochs, "finetune": args.finetune_epochs}
    for stage, result in staged["stages"].items():
        rate = ""
        if stage in epochs:
            rate = f"{train * epochs[stage] / result['seconds']:.0f}"
        lines.append(f"| {stage} | {result['seconds']:.1f} | {rate} | "
                     f"{result['peak_rss_mib']:.0f} |")
    total = sum(r["seconds"] for r in staged["stages"].values())
    peak = max(staged["stages"][s]["peak_rss_mib"] for s in TRAINING)
    lines += [f"| **total** | **{total:.0f}** | | |", "",
              f"Validation accuracy: transfer {staged['transfer_val_accuracy']:.3f}, fine-tune "
              f"{staged['finetune_val_accuracy']:.3f}. Peak RSS of the training stages "
              f"({', '.join(TRAINING)}): {peak:.0f} MiB. Prefix cache (boundary "
              f"{', '.join(staged['prefix_boundary'])}): {staged['prefix_bytes'] / 2**20:.0f} MiB "
              f"({', '.join(f'{k} {v}' for k, v in staged['prefix_splits'].items())})."]
    return lines


def ratio_lines(base: dict, staged: dict | None, whole: dict | None) -> list[str]:
    baseline_total = base["transfer_seconds"] + base["finetune_seconds"]
    ours = whole or {"seconds": sum(r["seconds"] for r in staged["stages"].values()),
                     **{k: staged[k] for k in ("transfer_val_accuracy", "finetune_val_accuracy")}}
    what = "whole `dvc repro evaluate`" if whole else "all stages"
    return ["", "## Ratios", "",
            f"- Speed-up: tutorial transfer + fine-tune {baseline_total:.0f} s / warmstart "
            f"{what} {ours['seconds']:.0f} s = **{baseline_total / ours['seconds']:.1f}x**",
            f"- Fine-tune val accuracy: warmstart {ours['finetune_val_accuracy']:.3f} vs "
            f"tutorial {base['finetune_val_accuracy']:.3f} (difference "
            f"{ours['finetune_val_accuracy'] - base['finetune_val_accuracy']:+.3f})",
            f"- Transfer val accuracy: warmstart {ours['transfer_val_accuracy']:.3f} vs "
            f"tutorial {base['transfer_val_accuracy']:.3f}"]


def scaling_table(scale: dict, staged: dict | None, args: argparse.Namespace) -> list[str]:
    lines = ["", "## Scaling (warmstart stage wall time, s, incl. ~3 s start-up importing TF)", "",
             "| epochs | transfer | finetune |", "|---|---:|---:|"]
    for factor, row in scale["epochs"].items():
        lines.append(f"| {factor} ({args.transfer_epochs * int(factor[0])} + "
                     f"{args.finetune_epochs * int(factor[0])}) | {row['transfer']:.1f} | "
                     f"{row['finetune']:.1f} |")
    big = scale["size160"]
    lines += ["", "| image size | preprocess | features | transfer | finetune | "
              "val acc transfer / fine-tune |", "|---|---:|---:|---:|---:|---|"]
    if staged:
        s = {k: v["seconds"] for k, v in staged["stages"].items()}
        lines.append(f"| {args.image_size} | {s['preprocess']:.1f} | {s['features']:.1f} | "
                     f"{s['transfer']:.1f} | {s['finetune']:.1f} | "
                     f"{staged['transfer_val_accuracy']:.3f} / "
                     f"{staged['finetune_val_accuracy']:.3f} |")
    lines.append(f"| 160 | {big['preprocess']:.1f} | {big['features']:.1f} | "
                 f"{big['transfer']:.1f} | {big['finetune']:.1f} | "
                 f"{big['transfer_val_accuracy']:.3f} / {big['finetune_val_accuracy']:.3f} |")
    f32 = scale["float32"]
    lines += ["", f"Prefix cache with the training split as float32 too: "
              f"{f32['bytes'] / 2**20:.0f} MiB, features stage "
              f"{f32['features']:.1f} s, finetune {f32['finetune']:.1f} s, fine-tune val accuracy "
              f"{f32['val_accuracy']:.3f} (float16 row above)."]
    return lines


def main() -> None:
    args = parse_args()
    args.transfer_epochs = max(1, round(args.epochs * args.epochs_scale))
    args.finetune_epochs = max(1, round(args.fine_tune_epochs * args.epochs_scale))
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = args.workdir / "bench.log"
    log.write_text("")
    before, results = uptime(), {}
    if not args.skip_baseline:
        results["baseline"] = baseline(args, log)
    if not args.skip_stages:
        results["stages"] = stages(args, log)
    if not args.skip_repro:
        results["repro"] = repro(args, log)
    if not args.skip_scaling:
        project = Path(results["stages"]["project"]) if "stages" in results else None
        results["scaling"] = scaling(args, log, project)
    load = (before, uptime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    text = report(args, results, load)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
