"""`warmstart`: the command line humans and dvc.yaml use. One sub-command per pipeline stage."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import warnings
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import NoReturn

from warmstart.config.params import DEFAULT_PARAMS_FILE, Params, load_params
from warmstart.errors import WarmstartError
from warmstart.layout import MANIFEST_FILE

logger = logging.getLogger("warmstart")

#: stage name -> (module, function, help). Modules are imported lazily (TF/TFDV import slowly).
STAGES: dict[str, tuple[str, str, str]] = {
    "ingest": ("warmstart.stages.ingest", "run_ingest",
               "bring data.source (URL, .zip or folder) into paths.raw"),
    "validate": ("warmstart.stages.validate", "run_validate",
                 "TFDV statistics + schema check of the images; fails on anomalies"),
    "preprocess": ("warmstart.stages.preprocess", "run_preprocess",
                   "decode + resize validated images into TFRecord shards"),
    "features": ("warmstart.stages.features", "run_features",
                 "one pass of the frozen base: pooled features + fine-tune prefix cache"),
    "transfer": ("warmstart.stages.transfer", "run_transfer",
                 "train the head on the frozen base (transfer learning)"),
    "finetune": ("warmstart.stages.finetune", "run_finetune",
                 "unfreeze the base from finetune.fine_tune_at and train more"),
    "evaluate": ("warmstart.stages.evaluate", "run_evaluate",
                 "metrics and plots of both models on the validation and test splits"),
    "export": ("warmstart.stages.export", "run_export",
               "SavedModel + TFLite (float32, int8) of the fine-tuned model, parity-checked"),
    "model_card": ("warmstart.stages.model_card", "run_model_card",
                   "write the model card: data version, params, metrics, export sizes"),
    "gate": ("warmstart.stages.gate", "run_gate",
             "promote the exported model to paths.promoted_model if gate.* bounds pass"),
}


def stage_function(name: str) -> Callable[[Params], object]:
    module, function, _ = STAGES[name]
    return getattr(import_module(module), function)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warmstart", description="Transfer learning then fine-tuning as a reproducible "
        "pipeline. `dvc repro` runs the stages below in order; each can also run alone.")
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE, help="params file "
                        "(default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, help_text) in STAGES.items():
        commands.add_parser(name, help=f"stage: {help_text}")
    schema = commands.add_parser("schema", help="propose a TFDV schema from the training split "
                                 "and show its diff against the committed one")
    schema.add_argument("--write", action="store_true", help="write the proposal to "
                        "paths.schema (review and commit it)")
    init = commands.add_parser(
        "init", help="set the project up for your images: detect the layout of --source, "
        "write data.* into params.yaml and propose the schema from it")
    init.add_argument("--source", required=True, help="http(s) URL, .zip or folder of images "
                      "(split folders, class folders or a CSV of path,label[,split])")
    init.add_argument("--dry-run", action="store_true", help="show what it found and the "
                      "diffs of params.yaml and the schema; write nothing")
    add_predict_parser(commands)
    return parser


def add_predict_parser(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict", help="classify an image or a folder of images (exit status 1 only if no "
        "image could be predicted; unreadable files are reported and skipped)")
    predict.add_argument("model", type=Path, help=".keras or .tflite file, SavedModel folder, "
                         "or a folder holding model.keras (e.g. models/promoted)")
    predict.add_argument("images", type=Path, help="an image file, or a folder searched "
                         "recursively for .jpg/.jpeg/.png/.gif/.bmp files")
    predict.add_argument("--top-k", type=int, default=3, help="classes listed per image "
                         "(default: %(default)s)")
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table",
                         help="output on stdout (default: %(default)s)")
    predict.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    predict.add_argument("--max-pixels", type=int, help="images whose header claims more "
                         "pixels are reported, not decoded (default: 100 million, the "
                         "decompression-bomb guard of warmstart predict)")
    predict.add_argument("--classes", type=Path, help="classes.json or the training run's "
                         "manifest.json (default: classes.json beside the model, else this "
                         "project's paths.processed manifest)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        if args.command == "predict":
            return run_predict(args)
        if args.command == "init":  # before load_params: the old data.source may be gone
            onboarding = import_module("warmstart.data.onboarding")
            return onboarding.run_init(Path(args.params), args.source, dry_run=args.dry_run)
        params = load_params(args.params)
        if args.command == "schema":
            validate = import_module("warmstart.stages.validate")
            return validate.run_schema(params, write=args.write)
        stage_function(args.command)(params)
    except WarmstartError as exc:
        logger.error("%s failed:\n%s", args.command, exc)
        return 1
    return 0


def run() -> NoReturn:
    """Entry point of ``warmstart`` and ``python -m warmstart``: :func:`main`, then exit at once.

    With TensorFlow loaded, the interpreter's own teardown takes about a second, once per stage
    process (measured: 0.96 s vs 0.12 s). By then every output is complete: written to a
    temporary name, fsynced and renamed into place (``warmstart/atomic.py``), so the logs and
    standard streams are flushed and the process ends without that teardown. The ``atexit``
    handlers still run (milliseconds): ``os._exit`` alone skipped AutoGraph's removal of the
    ``__autograph_generated_file*.py`` it writes to the temporary folder, so every stage
    process left its files there. A crash (an exception other than WarmstartError) still goes
    through the normal interpreter exit.
    """
    code = main()
    atexit._run_exitfuncs()  # also logging.shutdown, registered by logging
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def run_predict(args: argparse.Namespace) -> int:
    predict = import_module("warmstart.inference.predict")
    sys.stdout.write(predict.predict(
        args.model, args.images, top_k=args.top_k, fmt=args.format, batch_size=args.batch_size,
        classes=args.classes, fallback_classes=project_manifest(args.params),
        max_pixels=args.max_pixels))
    return 0


def project_manifest(params_file: str) -> Path | None:
    """This project's preprocessing manifest (class names of its training run), if any."""
    if not Path(params_file).is_file():
        return None
    try:
        return load_params(params_file).path("processed") / MANIFEST_FILE
    except WarmstartError:
        return None


def configure_logging(verbose: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=FutureWarning, module="google")
    # Keras 3.3 warns at the end of every finite tf.data epoch; the datasets are finite on purpose.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


if __name__ == "__main__":
    sys.exit(main())
