"""Export a trained model and measure `warmstart predict` throughput per artefact.

Runs the export stage's code (artefacts, sizes, parity on the validation shards) into a
temporary folder, never touching the project's models/, then predicts every image file under
``--images`` with each artefact through ``warmstart.inference.predict.predict_files`` (the same
decode + resize as training, batched tf.data) and prints images/s, end to end from file to
class. The accuracy against the class folder names shows the file path agrees with `evaluate`.

    uv run --frozen python bench/predict_throughput.py            # the project's real run
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

from warmstart.config.params import load_params
from warmstart.inference.predict import find_labels, list_images, load_predictor, predict_files
from warmstart.layout import VALIDATION
from warmstart.stages.export import artefacts, run_export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", default=None, help="default: <paths.raw>/<validation>")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="TFLite threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    images = Path(args.images or params.path("raw") / VALIDATION)
    with tempfile.TemporaryDirectory(prefix="warmstart-bench-") as tmp:
        paths = dataclasses.replace(params.paths, export_model=f"{tmp}/export",
                                    export_metrics=f"{tmp}/export.json",
                                    export_details=f"{tmp}/export_details.json")
        params = dataclasses.replace(params, paths=paths)
        started = time.perf_counter()
        results = run_export(params)
        print(f"export stage: {time.perf_counter() - started:.1f} s, parity with the predictions "
              f"{results['reference']['model']} recorded ({results['validation_images']} "
              "validation images)")
        print_parity(results)
        files = list_images(images)
        print(f"\npredict on {len(files)} files under {images} (batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs, TFLite threads {args.threads}):")
        for name, path in artefacts(params.path("export_model")).items():
            measure(name, path, files, args.batch_size, args.threads)


def print_parity(results: dict) -> None:
    print(f"{'artefact':<18} {'bytes':>12} {'top-1 agreement':>16} {'max |p diff|':>13}")
    for name, entry in results["artefacts"].items():
        agreement = entry.get("top1_agreement", "")
        diff = entry.get("max_abs_diff")
        print(f"{name:<18} {entry.get('bytes', ''):>12} {agreement!s:>16} "
              f"{'' if diff is None else f'{diff:.2e}':>13}")


def measure(name: str, path: Path, files: list[Path], batch_size: int, threads: int) -> None:
    predictor = load_predictor(path, num_threads=threads) if path.suffix == ".tflite" \
        else load_predictor(path)
    labels = find_labels(path)
    predict_files(predictor, labels, files[:batch_size], batch_size, progress=False)  # warm-up
    started = time.perf_counter()
    predictions, failures = predict_files(predictor, labels, files, batch_size, progress=False)
    seconds = time.perf_counter() - started
    correct = sum(p.label == Path(p.path).parent.name for p in predictions)
    print(f"{name:<18} {len(predictions) / seconds:8.1f} images/s  ({seconds:.1f} s, "
          f"accuracy vs folder names {correct / len(predictions):.4f}, "
          f"{len(failures)} failed)")


if __name__ == "__main__":
    main()
