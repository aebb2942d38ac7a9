"""What makes the two training stages gain, measured: variants of the schedule on real data.

    uv run --frozen python bench/finetune_study.py --dataset ../shared/datasets/flower_photos.zip \
        --image-size 224 --variants tutorial,default,ft_lr_1e-4

One scratch project per dataset and image size (this repo's code, dvc.yaml and params.yaml;
``warmstart init`` for the source's layout) runs ``ingest`` .. ``features`` once. Each variant
is a set of params overrides; it runs ``transfer``, ``finetune`` and ``evaluate`` (each
``python -m warmstart <stage>`` in its own process) in a folder sharing the prepared data and
caches read-only (``features`` is re-run there only when a variant changes the cut or the
cache). Variants with the same transfer-side params share one transfer run.

Every choice (early stopping, the head's learning rate, the candidate) is made on the
VALIDATION split; the table reports validation and test figures, and the defaults in
params.yaml were picked on the validation columns only. Results go to
``bench/results/finetune_study_<dataset>_<size>.{md,json}`` (and stdout).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml
from tutorial_vs_warmstart import copy_checkout, measured  # bench/ is on sys.path when run

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PREPARE = ["ingest", "validate", "preprocess", "features"]
#: Params sections that decide the transfer stage's result (variants equal in these share it).
TRANSFER_SIDE = ("base", "head", "train", "transfer", "augment", "preprocess")
#: Params of the features stage: a variant changing one of these gets its own caches.
CACHE_KEYS = (("finetune", "fine_tune_at"), ("finetune", "cache_dtype"))
TUTORIAL = {"transfer": {"learning_rate": 0.0001, "epochs": 50, "patience": None},
            "finetune": {"learning_rate": 0.00001, "epochs": 5, "patience": None,
                         "schedule": "constant"},
            "train": {"label_smoothing": 0.0}}
#: The fine-tune variants of the first studies ran at a constant rate (before
#: ``finetune.schedule``); they keep it, so each name means what its earlier rows measured.
CONSTANT = {"schedule": "constant"}
VARIANTS: dict[str, dict] = {
    "tutorial": TUTORIAL,
    "tutorial_schedule_early_stopping": {
        "transfer": {"learning_rate": 0.0001, "epochs": 100},
        "finetune": {"learning_rate": 0.00001, "epochs": 20, **CONSTANT}},
    "default": {},
    "no_label_smoothing": {"train": {"label_smoothing": 0.0}},
    "ft_lr_3e-5": {"finetune": {"learning_rate": 0.00003, "epochs": 20, **CONSTANT}},
    "ft_lr_1e-4": {"finetune": {"learning_rate": 0.0001, "epochs": 20, **CONSTANT}},
    "ft_lr_3e-4": {"finetune": {"learning_rate": 0.0003, "epochs": 20, **CONSTANT}},
    "ft_at_72": {"finetune": {"fine_tune_at": 72, "learning_rate": 0.0001, "epochs": 20,
                              **CONSTANT}},
    "ft_at_130": {"finetune": {"fine_tune_at": 130, "learning_rate": 0.0001, "epochs": 20,
                               **CONSTANT}},
    "ft_flip": {"finetune": {"learning_rate": 0.0001, "epochs": 10, **CONSTANT},
                "augment": {"flip": "horizontal"}},
    # The defaults until 2026-12-07 (layer 72, constant 1e-4, at most 10 epochs), and the
    # cosine schedule (the rate falls from learning_rate to 0 over the epochs) at other lengths
    # and rates.
    "ft_constant_10": {"finetune": {"fine_tune_at": 72, "learning_rate": 0.0001, "epochs": 10,
                                    **CONSTANT}},
    "ft_cosine_4": {"finetune": {"fine_tune_at": 72, "learning_rate": 0.0001, "epochs": 4,
                                 "schedule": "cosine"}},
    "ft_cosine_8": {"finetune": {"fine_tune_at": 72, "learning_rate": 0.0001, "epochs": 8,
                                 "schedule": "cosine"}},
    "ft_cosine_5_2e-4": {"finetune": {"fine_tune_at": 72, "learning_rate": 0.0002, "epochs": 5,
                                      "schedule": "cosine"}},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path,
                        default=SHARED / "datasets" / "cats_and_dogs_filtered.zip")
    parser.add_argument("--weights", type=Path,
                        default=SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.h5")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--variants", default="tutorial,default",
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--max-finetune-epochs", type=int, default=None,
                        help="cap finetune.epochs of the variants that set it (not tutorial)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/warmstart-study"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    return parser.parse_args()


def run(cmd: list[str], cwd: Path, log: Path) -> float:
    """Run ``cmd`` in ``cwd`` (output appended to ``log``); its wall seconds."""
    return measured(cmd, cwd, log)["seconds"]


def stage(project: Path, name: str, log: Path) -> float:
    return run([sys.executable, "-m", "warmstart", name], project, log)


def read_params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())


def write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def prepared(args: argparse.Namespace, log: Path) -> tuple[Path, dict]:
    """The scratch project after ``features`` (reused when its params are unchanged)."""
    project = args.workdir / f"{args.dataset.stem}_{args.image_size}" / "prepared"
    marker = project / "prepared.json"
    if marker.is_file():
        return project, json.loads(marker.read_text())
    copy_checkout(project)
    run([sys.executable, "-m", "warmstart", "init", "--source", str(args.dataset.resolve())],
        project, log)
    params = read_params(project)
    params["base"]["weights"] = str(args.weights.resolve())
    params["preprocess"]["image_size"] = args.image_size
    write_params(project, params)
    seconds = {name: round(stage(project, name, log), 1) for name in PREPARE}
    marker.write_text(json.dumps(seconds))
    return project, seconds


def capped(overrides: dict, epochs: int | None) -> dict:
    """``overrides`` with finetune.epochs at most ``epochs`` (the study's time budget)."""
    result = json.loads(json.dumps(overrides))
    if epochs is not None and "epochs" in result.get("finetune", {}):
        result["finetune"]["epochs"] = min(result["finetune"]["epochs"], epochs)
    return result


def merged(base: dict, overrides: dict) -> dict:
    params = json.loads(json.dumps(base))
    for section, values in overrides.items():
        params[section].update(values)
    return params


def link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(source.resolve())


def variant_folder(prepared_project: Path, name: str, params: dict) -> Path:
    """A folder sharing the prepared code, data and (when its cut is the same) caches."""
    folder = prepared_project.parent / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    base = read_params(prepared_project)
    link(REPO / "warmstart", folder / "warmstart")  # the code under study, as it is now
    for item in ("schema", "dvc.yaml"):
        link(prepared_project / item, folder / item)
    keep_cache = all(params[s][k] == base[s][k] for s, k in CACHE_KEYS)
    # raw: evaluate's report makes thumbnails of the images it names
    shared = ["raw", "processed"] + (["features", "prefix"] if keep_cache else [])
    for key in shared:
        link(prepared_project / base["paths"][key], folder / params["paths"][key])
    write_params(folder, params)
    return folder


def transfer_outputs(params: dict) -> list[str]:
    paths = params["paths"]
    return [paths[f"transfer_{kind}"] for kind in ("model", "metrics", "details", "predictions",
                                                  "history")]


def run_variant(prepared_project: Path, name: str, overrides: dict, done: dict,
                log: Path) -> dict:
    """transfer (or a shared earlier one), finetune, evaluate; the figures of the variant."""
    params = merged(read_params(prepared_project), overrides)
    folder = variant_folder(prepared_project, name, params)
    seconds = {}
    if not (folder / params["paths"]["features"]).exists():
        seconds["features"] = stage(folder, "features", log)
    key = json.dumps({s: params[s] for s in TRANSFER_SIDE}, sort_keys=True)
    if key in done:
        for item in transfer_outputs(params):
            link(done[key] / item, folder / item)
    else:
        seconds["transfer"] = stage(folder, "transfer", log)
        done[key] = folder
    for name_ in ("finetune", "evaluate"):
        seconds[name_] = stage(folder, name_, log)
    return figures(folder, params, seconds)


def figures(folder: Path, params: dict, seconds: dict) -> dict:
    paths = params["paths"]
    evaluation = json.loads((folder / paths["evaluate_metrics"]).read_text())
    training = {s: json.loads((folder / paths[f"{s}_metrics"]).read_text())
                for s in ("transfer", "finetune")}
    candidate = evaluation["candidate"]["model"]
    return {"candidate": candidate,
            **{f"{s}_{split}": evaluation[s][split]["accuracy"]
               for s in ("transfer", "finetune") for split in ("validation", "test")},
            "candidate_test": evaluation[candidate]["test"]["accuracy"],
            "head_lr": training["transfer"].get("learning_rate"),
            "epochs": {s: f"{training[s].get('kept_epoch')}/{training[s]['epochs']}"
                       for s in training},
            "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def report(args: argparse.Namespace, prepare: dict, rows: dict[str, dict]) -> str:
    lines = [f"# Fine-tune study: `{args.dataset.name}` at {args.image_size} px "
             f"({time.strftime('%Y-%m-%d %H:%M')})", "",
             "Every choice is made on the validation split; defaults were picked on the "
             "validation columns. Test: held out, reported only. Epochs: kept/run "
             "(transfer; finetune counts on from transfer's).", "",
             f"Prepared once (s): {prepare}.", "",
             "| variant | overrides | transfer val | finetune val | candidate | transfer test "
             "| finetune test | candidate test | head lr | epochs kept/run | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        overrides = "; ".join(f"{s}.{k}={v}" for s, values in row["overrides"].items()
                              for k, v in values.items()) or "(params.yaml)"
        lines.append(
            f"| {name} | {overrides} | {row['transfer_validation']:.4f} | "
            f"{row['finetune_validation']:.4f} | {row['candidate']} | "
            f"{row['transfer_test']:.4f} | {row['finetune_test']:.4f} | "
            f"**{row['candidate_test']:.4f}** | {row['head_lr']} | "
            f"{row['epochs']['transfer']}, {row['epochs']['finetune']} | "
            f"{sum(row['seconds'].values()):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = args.workdir / "study.log"
    project, prepare = prepared(args, log)
    done: dict[str, Path] = {}
    rows = {}
    for name in names:
        overrides = capped(VARIANTS[name], args.max_finetune_epochs if name != "tutorial" else None)
        rows[name] = run_variant(project, name, overrides, done, log)
        rows[name]["overrides"] = overrides
        print(name, json.dumps(rows[name]), flush=True)
    stem = f"finetune_study_{args.dataset.stem}_{args.image_size}"
    args.out.mkdir(parents=True, exist_ok=True)
    earlier = args.out / f"{stem}.json"
    if earlier.is_file():  # a study run piecewise: earlier variants stay in the table
        rows = {**json.loads(earlier.read_text())["variants"], **rows}
    text = report(args, prepare, rows)
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"dataset": args.dataset.name, "image_size": args.image_size, "prepare": prepare,
         "variants": rows}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
