"""Side by side on the same data, weights, image size and machine: tutorial recipe vs warmstart.

    uv run --frozen python bench/tutorial_vs_warmstart.py            # all, ~15 min on 2 idle cores

Parts (each can be skipped, so the benchmark can run piecewise):

1. baseline   ``bench/tutorial_baseline.py`` (Keras 2 ``tf_keras``, ImageDataGenerator, full forward
              pass every epoch), in its own process: wall time per phase, peak RSS, accuracy.
2. stages     warmstart's stages one by one (``python -m warmstart <stage>``, each its own process)
              in a scratch project: wall time and peak RSS per stage, accuracy from its metrics.
3. repro      warmstart's whole pipeline in a fresh git + DVC project: one ``dvc repro`` (all
              ten stages, as a user runs it): its wall time, each stage's share (from DVC's
              ``Running stage`` lines) and the training part (ingest ... evaluate).
4. scaling    (``--scaling``) image size 160; finetune with a float32 instead of float16 prefix
              cache (accuracy and cache size).

The tutorial recipe runs its fixed schedule (``--epochs`` + ``--fine-tune-epochs``); warmstart
runs params.yaml as it is (its schedule is chosen on validation: early stopping, the head's
learning rate). Both see the same images: the baseline reads the splits warmstart's ``ingest``
wrote (train; validation, on which it reports per epoch as the tutorial does; test, held out,
scored once after each phase), so every accuracy names its split and compares like with like.

Every child's peak RSS comes from ``os.wait4`` (its own rusage, including its children). The
Markdown report goes to ``bench/results/`` (and stdout), with ``uptime`` load averages before and
after: other processes on the machine distort timings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from warmstart.config.params import read_yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: Every stage of the pipeline, in order (dvc.yaml's): the training part (ingest ... evaluate)
#: and the stages after it.
PIPELINE = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
STAGES = PIPELINE[:PIPELINE.index("evaluate") + 1]
AFTER_EVALUATE = PIPELINE[len(STAGES):]
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
    parser.add_argument("--scaling", action="store_true", help="also run part 4")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="also run part 3 with these params overrides (repeatable), e.g. "
                        "cut100:finetune.fine_tune_at=100")
    return parser.parse_args()


def parse_variant(text: str) -> tuple[str, dict[str, dict]]:
    """``name:section.key=value,...`` -> (name, {section: {key: YAML value}})."""
    name, _, pairs = text.partition(":")
    overrides: dict[str, dict] = {}
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        section, _, field = key.partition(".")
        overrides.setdefault(section, {})[field] = read_yaml(f"v: {value}")["v"]  # YAML 1.2
    return name, overrides


def measured(cmd: list[str], cwd: Path, log: Path, check: bool = True) -> dict:
    """Run ``cmd``; return wall seconds and peak RSS (MiB) of it and its descendants, its exit
    status (``check``: a failure ends the benchmark) and, per DVC stage it ran, the seconds
    from its ``Running stage`` line to the next one (or the end)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start, starts = time.perf_counter(), []
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        for line in proc.stdout:
            out.write(line)
            found = re.match(r"Running stage '([^']+)'", line)
            if found:
                starts.append((found.group(1), time.perf_counter()))
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    end = time.perf_counter()
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    ends = [t for _, t in starts[1:]] + ([end] if starts else [])  # each stage's end
    return {"seconds": end - start, "peak_rss_mib": usage.ru_maxrss / 1024,
            "returncode": proc.returncode,
            "stages": {name: round(stop - begin, 1)
                       for (name, begin), stop in zip(starts, ends, strict=True)}}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ---- workspaces -----------------------------------------------------------------------------

def make_project(target: Path, args: argparse.Namespace, **overrides: dict) -> Path:
    """A scratch warmstart project: this repo's code, dvc.yaml, schema and params, overridden."""
    copy_checkout(target)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(args.dataset.resolve())
    params["base"]["weights"] = str(args.weights.resolve())
    params["preprocess"]["image_size"] = args.image_size
    for section, values in overrides.items():
        params[section].update(values)
    write_params(target, params)
    return target


def copy_checkout(target: Path) -> None:
    """``target`` (emptied) as a scratch project of this checkout: dvc.yaml, params.yaml,
    .gitignore (the per-image store and caches stay out of git), the warmstart package and the
    schema."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(REPO / name, target)
    for name in ("warmstart", "schema"):
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def set_param(project: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section][key] = value
    write_params(project, params)


def metric(project: Path, name: str, split: str = "validation") -> float:
    """A model's accuracy on ``split`` as evaluate scored it (metrics/evaluate.json)."""
    return json.loads((project / "metrics" / "evaluate.json").read_text())[name][split]["accuracy"]


def accuracies(project: Path) -> dict:
    """Both models' validation and test accuracy, and which one is the candidate."""
    evaluation = json.loads((project / "metrics" / "evaluate.json").read_text())
    return {"candidate": evaluation["candidate"]["model"],
            **{f"{model}_{split}_accuracy": evaluation[model][split]["accuracy"]
               for model in ("transfer", "finetune") for split in ("validation", "test")}}


def run_stage(project: Path, stage: str, log: Path) -> dict:
    return measured([sys.executable, "-m", "warmstart", stage], project, log)


# ---- parts --------------------------------------------------------------------------------

def baseline(args: argparse.Namespace, log: Path) -> dict:
    """The recipe on the splits warmstart's ingest makes of the same source (same images)."""
    project = make_project(args.workdir / "baseline_data", args)
    run_stage(project, "ingest", log)
    data = project / "data" / "raw"
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
    return {"project": str(project), "stages": times, **accuracies(project),
            "prefix_bytes": sum(s["bytes"] for s in prefix_info["splits"].values()),
            "prefix_splits": {name: f"{s['dtype']} {s['bytes'] / 2**20:.0f} MiB"
                              for name, s in prefix_info["splits"].items()},
            "prefix_boundary": prefix_info["boundary"]}


def repro(args: argparse.Namespace, log: Path, name: str = "repro",
          overrides: dict[str, dict] | None = None) -> dict:
    project = make_project(args.workdir / name, args, **(overrides or {}))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        measured(cmd, project, log)
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")  # the repo's DVC config
    # One `dvc repro`, as a user runs it; the training part (ingest ... evaluate) is the time
    # until DVC starts `export`.
    whole = measured(["dvc", "repro"], project, log)
    missing = [name for name in PIPELINE if name not in whole["stages"]]
    if missing:
        raise SystemExit(f"`dvc repro` did not run {missing}; see {log}")
    training = whole["seconds"] - sum(whole["stages"][name] for name in AFTER_EVALUATE)
    return {**whole, "evaluate": {"seconds": training}, **accuracies(project)}


def scaling(args: argparse.Namespace, log: Path, stage_project: Path | None) -> dict:
    project = stage_project or Path(stages(args, log)["project"])
    set_param(project, "finetune", "cache_dtype", "float32")
    float32 = {s: run_stage(project, s, log)["seconds"] for s in ("features", "finetune")}
    info = json.loads((project / "data" / "prefix" / "prefix.json").read_text())
    run_stage(project, "evaluate", log)
    float32.update(val_accuracy=metric(project, "finetune"),
                   bytes=sum(s["bytes"] for s in info["splits"].values()))
    set_param(project, "finetune", "cache_dtype", "float16")
    big = make_project(args.workdir / "size160", args, preprocess={"image_size": 160})
    for folder in ("raw", "validated"):
        shutil.copytree(project / "data" / folder, big / "data" / folder)
    size160 = {s: run_stage(big, s, log)["seconds"]
               for s in ("preprocess", "features", "transfer", "finetune", "evaluate")}
    size160.update(transfer_val_accuracy=metric(big, "transfer"),
                   finetune_val_accuracy=metric(big, "finetune"))
    return {"float32": float32, "size160": size160}


# ---- report -------------------------------------------------------------------------------

def report(args: argparse.Namespace, results: dict, load: tuple[str, str]) -> str:
    lines = [f"# Tutorial recipe vs warmstart ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Data `{args.dataset.name}`, weights `{args.weights.name}`, {args.image_size} px, "
             f"{os.cpu_count()} CPU cores. The tutorial recipe: transfer {args.transfer_epochs} + "
             f"fine-tune {args.finetune_epochs} epochs (from layer 100); warmstart: params.yaml "
             "(its schedule chosen on the validation split). Same images on both sides: "
             "warmstart's train / validation / test splits.", "",
             f"Load before: `{load[0]}`", f"Load after: `{load[1]}`", ""]
    base, staged, whole = (results.get(k) for k in ("baseline", "stages", "repro"))
    if base:
        lines += baseline_table(args, base)
    if staged:
        lines += stage_table(staged)
    if whole:
        lines += ["", "**warmstart whole pipeline** (fresh git + DVC project, one `dvc repro`): "
                  f"**{whole['seconds']:.0f} s**, of which ingest ... evaluate "
                  f"{whole['evaluate']['seconds']:.0f} s; peak RSS "
                  f"{whole['peak_rss_mib']:.0f} MiB; " + accuracy_text(whole), "",
                  "| stage | " + " | ".join(whole["stages"]) + " |",
                  "|---|" + "---:|" * len(whole["stages"]),
                  "| s (from DVC's `Running stage` line to the next) | "
                  + " | ".join(f"{v:.1f}" for v in whole["stages"].values()) + " |"]
    if base and (whole or staged):
        lines += ratio_lines(base, staged, whole)
    if results.get("variants"):
        lines += variant_table(results["variants"], base)
    if results.get("scaling"):
        lines += scaling_table(results["scaling"], staged, args)
    return "\n".join(lines) + "\n"


def accuracy_text(run: dict) -> str:
    return (f"accuracy validation / test: transfer {run['transfer_validation_accuracy']:.3f} / "
            f"{run['transfer_test_accuracy']:.3f}, fine-tune "
            f"{run['finetune_validation_accuracy']:.3f} / {run['finetune_test_accuracy']:.3f}; "
            f"candidate (chosen on validation) {run['candidate']}")


def baseline_table(args: argparse.Namespace, base: dict) -> list[str]:
    train = base["train_images"]
    total = base["transfer_seconds"] + base["finetune_seconds"]
    test = {phase: base.get(f"{phase}_test_accuracy") for phase in ("transfer", "finetune")}
    return ["## Tutorial recipe (tf_keras, ImageDataGenerator, batch "
            f"{args.baseline_batch})", "",
            "| phase | wall s | train images/s | validation acc (last epoch) | test acc |",
            "|---|---:|---:|---:|---:|",
            f"| transfer ({args.transfer_epochs} ep) | {base['transfer_seconds']:.0f} | "
            f"{train * args.transfer_epochs / base['transfer_seconds']:.0f} | "
            f"{base['transfer_val_accuracy']:.3f} | {fmt(test['transfer'])} |",
            f"| fine-tune ({args.finetune_epochs} ep) | {base['finetune_seconds']:.0f} | "
            f"{train * args.finetune_epochs / max(base['finetune_seconds'], 1e-9):.0f} | "
            f"{base['finetune_val_accuracy']:.3f} | {fmt(test['finetune'])} |",
            f"| **transfer + fine-tune** | **{total:.0f}** | | | |",
            f"| process total (incl. start-up) | {base['seconds']:.0f} | | | |", "",
            f"Peak RSS: {base['peak_rss_mib']:.0f} MiB. Validation {base['validation_images']} "
            "images.", ""]


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def stage_table(staged: dict) -> list[str]:
    lines = ["## warmstart, stage by stage (each `python -m warmstart <stage>`)", "",
             "| stage | wall s | peak RSS MiB |", "|---|---:|---:|"]
    for stage, result in staged["stages"].items():
        lines.append(f"| {stage} | {result['seconds']:.1f} | {result['peak_rss_mib']:.0f} |")
    total = sum(r["seconds"] for r in staged["stages"].values())
    peak = max(staged["stages"][s]["peak_rss_mib"] for s in TRAINING)
    lines += [f"| **total** | **{total:.0f}** | |", "",
              accuracy_text(staged) + f". Peak RSS of the training stages "
              f"({', '.join(TRAINING)}): {peak:.0f} MiB. Prefix cache (boundary "
              f"{', '.join(staged['prefix_boundary'])}): {staged['prefix_bytes'] / 2**20:.0f} MiB "
              f"({', '.join(f'{k} {v}' for k, v in staged['prefix_splits'].items())})."]
    return lines


def ratio_lines(base: dict, staged: dict | None, whole: dict | None) -> list[str]:
    baseline_total = base["transfer_seconds"] + base["finetune_seconds"]
    lines = ["", "## Ratios (tutorial transfer + fine-tune training alone vs warmstart)", ""]
    if whole:
        for what, seconds in (("ingest ... evaluate (within the one `dvc repro`)",
                               whole["evaluate"]["seconds"]),
                              ("the whole ten-stage pipeline", whole["seconds"])):
            lines.append(f"- {what}: {baseline_total:.0f} s / {seconds:.0f} s = "
                         f"**{baseline_total / seconds:.1f}x**")
    ours = whole or staged
    best = ours["candidate"]
    lines += [f"- Test accuracy: warmstart's candidate ({best}) "
              f"{ours[f'{best}_test_accuracy']:.3f} vs the tutorial's fine-tuned model "
              f"{fmt(base.get('finetune_test_accuracy'))}"]
    return lines


def variant_table(variants: dict, base: dict | None) -> list[str]:
    """Part 3 again with other params: the speed / accuracy trade of each."""
    lines = ["", "## Whole pipeline with other params (part 3 each; choices on validation)", "",
             "| variant | overrides | ingest ... evaluate s | all ten stages s | vs recipe | "
             "candidate | validation / test accuracy (candidate) |",
             "|---|---|---:|---:|---:|---|---|"]
    recipe = base["transfer_seconds"] + base["finetune_seconds"] if base else None
    for name, run in variants.items():
        pairs = "; ".join(f"{s}.{k}={v}" for s, kv in run["overrides"].items()
                          for k, v in kv.items())
        ratio = f"{recipe / run['seconds']:.1f}x" if recipe else "-"
        best = run["candidate"]
        lines.append(f"| {name} | {pairs} | {run['evaluate']['seconds']:.0f} | "
                     f"{run['seconds']:.0f} | {ratio} | {best} | "
                     f"{run[f'{best}_validation_accuracy']:.3f} / "
                     f"{run[f'{best}_test_accuracy']:.3f} |")
    return lines


def scaling_table(scale: dict, staged: dict | None, args: argparse.Namespace) -> list[str]:
    big = scale["size160"]
    lines = ["", "## Image size and cache dtype (stage wall time, s, incl. ~3 s start-up)", "",
             "| image size | preprocess | features | transfer | finetune | "
             "val acc transfer / fine-tune |", "|---|---:|---:|---:|---:|---|"]
    if staged:
        s = {k: v["seconds"] for k, v in staged["stages"].items()}
        lines.append(f"| {args.image_size} | {s['preprocess']:.1f} | {s['features']:.1f} | "
                     f"{s['transfer']:.1f} | {s['finetune']:.1f} | "
                     f"{staged['transfer_validation_accuracy']:.3f} / "
                     f"{staged['finetune_validation_accuracy']:.3f} |")
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
    for text in args.variant:
        name, overrides = parse_variant(text)
        results.setdefault("variants", {})[name] = {
            "overrides": overrides, **repro(args, log, f"repro_{name}", overrides)}
    if args.scaling:
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
