"""`warmstart predict`: class probabilities for image files, with any model warmstart writes.

A model is a ``.keras`` file, a ``.tflite`` file, a SavedModel folder (``saved_model.pb``, its
``serve`` endpoint) or a folder holding ``model.keras``. Images go through the exact decode +
resize of training (:func:`warmstart.data.decode.load_image`), batched in a tf.data pipeline. Class
names and the decision threshold come from ``classes.json`` beside the model (the export stage
writes it; in a SavedModel it lies in ``assets.extra/``), from ``--classes`` (a ``classes.json``
or the training run's ``manifest.json``), or else from the manifest of the current project.

A file that cannot be read or decoded is reported with its reason and the others are still
predicted; only when nothing at all could be predicted is that an error.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from warmstart.data.decode import decoder_message, load_image
from warmstart.errors import WarmstartError
from warmstart.inference.recorded import class_probabilities, predict_labels
from warmstart.layout import (
    CLASSES_FILE,
    IMAGE_SUFFIXES,
    MODEL_FILE,
    SAVED_MODEL_EXTRA,
    read_classes,
    write_classes,
)
from warmstart.modeling.model import load_model

logger = logging.getLogger(__name__)

SERVE_ENDPOINT = "serve"
FORMATS = ("table", "json", "csv")
DEFAULT_THRESHOLD = 0.5
#: Images whose header claims more pixels are reported, never decoded (decompression bombs).
MAX_PIXELS = 100_000_000


class PredictError(WarmstartError):
    """The model, its class names or the images cannot be used, or nothing could be predicted."""


@dataclass(frozen=True)
class Labels:
    """What the model's outputs mean: class names and the binary decision threshold."""

    classes: list[str]
    threshold: float
    source: Path


def write_labels(path: Path, classes: list[str], image_size: int, threshold: float) -> None:
    """The ``classes.json`` beside an exported model: what its outputs mean and its input size."""
    write_classes(path, classes, image_size=image_size, threshold=threshold)


def read_labels(path: Path) -> Labels:
    """Read a ``classes.json`` or a preprocessing ``manifest.json`` (threshold 0.5 then)."""
    try:
        data = read_classes(path)
        classes = [str(name) for name in data["classes"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PredictError(f"Cannot read class names from {path}: {exc}. Give the "
                           f"{CLASSES_FILE} the export stage writes beside the model, or the "
                           "training run's data/processed/manifest.json.") from exc
    return Labels(classes, float(data.get("threshold", DEFAULT_THRESHOLD)), path)


class Predictor(Protocol):
    """Raw model outputs (sigmoid (n, 1) or softmax (n, k)) for float32 0-255 pixel batches."""

    image_size: int
    outputs: int

    def __call__(self, pixels: np.ndarray) -> np.ndarray: ...


class KerasPredictor:
    def __init__(self, path: Path) -> None:
        self.model = load_model(path)
        self.image_size = int(self.model.input_shape[1])
        self.outputs = int(self.model.output_shape[-1])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(pixels))


class SavedModelPredictor:
    """The SavedModel's ``serve`` endpoint (float32 pixels at the training size)."""

    def __init__(self, path: Path) -> None:
        self.loaded = tf.saved_model.load(str(path))
        signature = self.loaded.signatures[SERVE_ENDPOINT]
        (spec,) = signature.structured_input_signature[1].values()
        (out,) = signature.structured_outputs.values()
        self.image_size = int(spec.shape[1])
        self.outputs = int(out.shape[-1])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return getattr(self.loaded, SERVE_ENDPOINT)(tf.constant(pixels)).numpy()


class TFLitePredictor:
    """A TFLite model; the interpreter is resized to each batch's size. ``num_threads`` None:
    one per core this process may use (TFLite's own default is one: half the speed on two
    cores, measured in the export stage)."""

    def __init__(self, path: Path, num_threads: int | None = None) -> None:
        threads = len(os.sched_getaffinity(0)) if num_threads is None else num_threads
        self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.image_size = int(self.input["shape"][1])
        self.outputs = int(self.output["shape"][-1])
        self.batch = -1

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(pixels.shape))
            self.interpreter.allocate_tensors()
            self.batch = len(pixels)
        self.interpreter.set_tensor(self.input["index"], pixels.astype(np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).copy()


def load_predictor(path: Path, num_threads: int | None = None) -> Predictor:
    """A predictor for a .keras / .tflite file, a SavedModel folder or a folder with model.keras."""
    if path.is_file() and path.suffix == ".keras":
        return KerasPredictor(path)
    if path.is_file() and path.suffix == ".tflite":
        return TFLitePredictor(path, num_threads)
    if (path / "saved_model.pb").is_file():
        return SavedModelPredictor(path)
    if (path / MODEL_FILE).is_file():
        return KerasPredictor(path / MODEL_FILE)
    raise PredictError(f"No model at {path}: give a .keras or .tflite file, a SavedModel folder "
                       f"or a folder holding {MODEL_FILE} (e.g. models/export or "
                       "models/promoted).")


def find_labels(model: Path, explicit: Path | None = None,
                fallback: Path | None = None) -> Labels:
    """Class names for ``model``: ``explicit``, else beside the model, else ``fallback``."""
    folder = model if model.is_dir() else model.parent
    beside = [folder / CLASSES_FILE, folder / SAVED_MODEL_EXTRA / CLASSES_FILE]
    for candidate in ([explicit] if explicit else []) + beside:
        if candidate.is_file():
            return read_labels(candidate)
    if explicit is None and fallback is not None and fallback.is_file():
        logger.info("No %s beside %s: using the class names of this project's training run "
                    "(%s)", CLASSES_FILE, model, fallback)
        return read_labels(fallback)
    raise PredictError(f"No class names for {model}: expected {beside[0]} (the export stage "
                       "writes it). Predict with models/export or models/promoted, or pass "
                       "--classes data/processed/manifest.json of the run that trained it.")


def check_labels(predictor: Predictor, labels: Labels) -> None:
    expected = 1 if len(labels.classes) == 2 else len(labels.classes)
    if predictor.outputs != expected:
        raise PredictError(f"The model has {predictor.outputs} output(s) but {labels.source} "
                           f"names {len(labels.classes)} classes {labels.classes}: they are "
                           "not from the same training run.")


def list_images(target: Path) -> list[Path]:
    """``target`` itself if it is a file, else the image files under it (recursive, sorted)."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise PredictError(f"{target} does not exist: give an image file or a folder of images.")
    files = sorted(p for p in target.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(images) < len(files):
        logger.info("Ignoring %d file(s) under %s without an image suffix %s",
                    len(files) - len(images), target, IMAGE_SUFFIXES)
    return images


def image_batches(files: Sequence[Path], size: int, batch_size: int
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices into ``files``, uint8 pixels) per batch; unreadable files are left out."""
    data = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(files)), [str(f) for f in files]))
    data = data.map(lambda i, p: (i, load_image(p, size)), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
    data = data.ignore_errors(log_warning=False).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    yield from data.as_numpy_iterator()


def oversized(path: Path, max_pixels: int) -> str:
    """A reason when the header claims more than ``max_pixels`` pixels ('' otherwise)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:
        return f"{exc}; not decoded"
    except (OSError, ValueError):
        return ""  # not an image Pillow knows: the decoder reports why
    if width * height <= max_pixels:
        return ""
    return (f"{width}x{height} = {width * height} pixels exceeds --max-pixels={max_pixels} "
            "(decompression bomb guard); not decoded")


def decode_error(path: Path, size: int) -> str:
    """Why ``path`` cannot be loaded: the decoder's own message."""
    try:
        load_image(tf.constant(str(path)), size)
    except tf.errors.OpError as exc:
        return decoder_message(exc)
    return "could not be loaded"


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str
    probabilities: dict[str, float]

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda item: -item[1])[:k]


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str


def predict_files(predictor: Predictor, labels: Labels, files: Sequence[Path],
                  batch_size: int = 32, progress: bool = True, max_pixels: int = MAX_PIXELS
                  ) -> tuple[list[Prediction], list[Failure]]:
    """Predict every file; oversized or undecodable files become failures with a reason."""
    check_labels(predictor, labels)
    refused = {f: reason for f in files if (reason := oversized(f, max_pixels))}
    allowed = [f for f in files if f not in refused]
    predictions: dict[int, Prediction] = {}
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)
    for indices, images in image_batches(allowed, predictor.image_size, batch_size):
        probabilities = class_probabilities(predictor(images.astype(np.float32)))
        decided = predict_labels(probabilities, labels.threshold)
        for index, row, label in zip(indices, probabilities, decided, strict=True):
            predictions[int(index)] = Prediction(
                str(allowed[index]), labels.classes[label],
                {name: float(p) for name, p in zip(labels.classes, row, strict=True)})
        bar.update(len(indices))
    failures = [Failure(str(f), refused.get(f) or decode_error(f, predictor.image_size))
                for i, f in enumerate(allowed) if i not in predictions]
    failures += [Failure(str(f), reason) for f, reason in refused.items()]
    bar.update(len(failures))
    bar.close()
    for failure in failures:
        logger.warning("Could not predict %s: %s", failure.path, failure.reason)
    return [predictions[i] for i in sorted(predictions)], failures


def format_table(predictions: list[Prediction], failures: list[Failure], k: int) -> str:
    width = max([len(p.path) for p in predictions + failures] + [4])
    lines = [f"{'path':<{width}}  {'prediction':<12}  top-{k}"]
    for pred in predictions:
        top = ", ".join(f"{name} {p:.4f}" for name, p in pred.top(k))
        lines.append(f"{pred.path:<{width}}  {pred.label:<12}  {top}")
    if failures:
        lines += ["", f"{len(failures)} file(s) could not be predicted:"]
        lines += [f"{f.path}: {f.reason}" for f in failures]
    return "\n".join(lines) + "\n"


def format_json(predictions: list[Prediction], failures: list[Failure], k: int) -> str:
    data = {
        "predictions": [{"path": p.path, "prediction": p.label,
                         "top_k": [{"class": name, "probability": round(prob, 6)}
                                   for name, prob in p.top(k)]} for p in predictions],
        "errors": [{"path": f.path, "error": f.reason} for f in failures],
    }
    return json.dumps(data, indent=2) + "\n"


def format_csv(predictions: list[Prediction], failures: list[Failure], k: int) -> str:
    """One row per file: path, prediction, class_1, probability_1, ..., error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    ranks = [f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "probability")]
    writer.writerow(["path", "prediction", *ranks, "error"])
    for pred in predictions:
        top = [value for name, p in pred.top(k) for value in (name, f"{p:.6f}")]
        writer.writerow([pred.path, pred.label, *top, ""])
    for failure in failures:
        writer.writerow([failure.path, "", *[""] * len(ranks), failure.reason])
    return buffer.getvalue()


FORMATTERS = {"table": format_table, "json": format_json, "csv": format_csv}


def predict(model: Path, target: Path, top_k: int = 3, fmt: str = "table", batch_size: int = 32,
            classes: Path | None = None, fallback_classes: Path | None = None,
            max_pixels: int | None = None) -> str:
    """The ``warmstart predict`` command: the formatted report, or PredictError if none worked."""
    if top_k < 1:
        raise PredictError(f"--top-k is {top_k}: use 1 or more.")
    if batch_size < 1:
        raise PredictError(f"--batch-size is {batch_size}: use 1 or more.")
    labels = find_labels(model, classes, fallback_classes)
    predictor = load_predictor(model)
    files = list_images(target)
    if not files:
        raise PredictError(f"No image files {IMAGE_SUFFIXES} under {target}.")
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    predictions, failures = predict_files(predictor, labels, files, batch_size,
                                          progress=len(files) > 1, max_pixels=limit)
    if not predictions:
        listed = "\n".join(f"- {f.path}: {f.reason}" for f in failures)
        raise PredictError(f"None of the {len(files)} file(s) could be predicted:\n{listed}")
    return FORMATTERS[fmt](predictions, failures, min(top_k, len(labels.classes)))
