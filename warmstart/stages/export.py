"""Stage `export`: the candidate model in deployable formats, each checked against Keras.

The candidate is the better of the transfer and fine-tuned models on the validation split, as
`evaluate` recorded it (``inference/candidate.py``). Writes the folder ``paths.export_model``:

- ``model.keras`` — the candidate's ``model.keras``, byte for byte;
- ``saved_model/`` — a TF SavedModel (Keras ``ExportArchive``, what ``model.export()`` uses) with
  endpoints ``serve`` (float32 0-255 pixels at the training size; also ``serving_default``),
  ``serve_uint8`` (uint8 images of ANY size, one size per batch) and ``serve_encoded``
  (JPEG/PNG/GIF/BMP bytes); both resize inside with the training's own
  :func:`warmstart.data.decode.resize_uint8` (and decode with ``decode_rgb``);
  ``assets.extra/classes.json`` makes the folder self-contained;
- ``model_float32.tflite`` and, with ``export.int8``, ``model_int8.tflite`` (dynamic-range
  quantised weights);
- ``classes.json`` — class names, image size and decision threshold (``warmstart predict``).

Parity: each artefact predicts through the loaders ``warmstart predict`` uses and is compared
with the predictions the candidate's stage recorded (``paths.<stage>_predictions``: the trained
model's outputs, which `evaluate` scored and the gate judges): top-1 agreement and the largest
absolute probability difference. The SavedModel's ``serve`` runs every validation and test
image, each TFLite model every validation image; ``model.keras`` as Keras loads it and the
``serve_uint8`` endpoint run the first validation batch, since they compute the very graph and
weights of ``serve`` (the SavedModel is traced from that loaded model, ``serve_uint8`` casts and
calls ``serve``): a fault of theirs shows on any batch, and ``serve`` is checked on every image.
So what was scored is what ships. Float32 artefacts must stay within
``export.float32_tolerance``, the int8 model must agree on at least
``export.int8_min_agreement`` of the images. The figures and each artefact's size go to
``paths.export_details`` (the compared figures to ``paths.export_metrics``); a violation fails
the stage and leaves the previous export in place.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from warmstart.atomic import atomic_dir, atomic_path, write_json
from warmstart.config.params import ExportParams, Params
from warmstart.data.decode import decode_rgb, resize_uint8
from warmstart.data.records import Manifest, image_dataset
from warmstart.errors import WarmstartError
from warmstart.inference.candidate import read_candidate
from warmstart.inference.predict import (
    SERVE_ENDPOINT,
    SavedModelPredictor,
    load_predictor,
    write_labels,
)
from warmstart.inference.recorded import (
    RECORDED_SPLITS,
    PredictionsError,
    class_probabilities,
    predict_labels,
    read_predictions,
)
from warmstart.layout import (
    CLASSES_FILE,
    MODEL_FILE,
    SAVED_MODEL_DIR,
    SAVED_MODEL_EXTRA,
    TFLITE_FLOAT32,
    TFLITE_INT8,
    VALIDATION,
)
from warmstart.modeling.model import load_model

logger = logging.getLogger(__name__)

class ExportParityError(WarmstartError):
    """An exported artefact does not predict what the candidate's stage recorded."""


def run_export(params: Params) -> dict:
    manifest = Manifest.read(params.path("processed"))
    candidate = read_candidate(params.path("evaluate_details"))["model"]
    source = params.path(f"{candidate}_model") / MODEL_FILE
    logger.info("export: the candidate is the %s model (%s)", candidate, source)
    # Dropout's random-seed state is not in model.keras: a load draws a new one, which the
    # SavedModel stores. Seeded, equal runs write equal bytes.
    keras.utils.set_random_seed(params.train.seed)
    model = load_model(source)
    with atomic_dir(params.path("export_model")) as staging:
        write_artefacts(model, source, staging, manifest, params)
        results = {"candidate": candidate,
                   **parity_report(staging, (candidate, model), manifest, params)}
        results["problems"] = parity_problems(results, params.export)
        results["passed"] = not results["problems"]
        write_json(params.path("export_details"), results)
        write_json(params.path("export_metrics"), compared(results))
        if results["problems"]:
            raise ExportParityError(parity_message(results, params.path("export_details")))
    logger.info("export: %s", {name: {k: v for k, v in art.items() if k != "file"}
                               for name, art in results["artefacts"].items()})
    return results


def compared(results: dict) -> dict:
    """What ``dvc metrics diff`` shows of an export: whether it passed, the model shipped and
    each checked artefact's parity (top-1 agreement, max |probability difference|); sizes,
    files and counts stay in ``paths.export_details``."""
    parity = {name: {k: entry[k] for k in ("top1_agreement", "max_abs_diff")}
              for name, entry in results["artefacts"].items() if "top1_agreement" in entry}
    return {"passed": results["passed"], "candidate": results["candidate"], "parity": parity}


def write_artefacts(model: keras.Model, source: Path, folder: Path, manifest: Manifest,
                    params: Params) -> None:
    shutil.copy2(source, folder / MODEL_FILE)
    write_labels(folder / CLASSES_FILE, manifest.classes, manifest.image_size,
                 params.evaluate.threshold)
    export_saved_model(model, folder / SAVED_MODEL_DIR, manifest.image_size)
    shutil.copy2(folder / CLASSES_FILE, folder / SAVED_MODEL_DIR / SAVED_MODEL_EXTRA)
    write_tflite(folder / SAVED_MODEL_DIR, folder / TFLITE_FLOAT32, quantize=False)
    if params.export.int8:
        write_tflite(folder / SAVED_MODEL_DIR, folder / TFLITE_INT8, quantize=True)


def export_saved_model(model: keras.Model, folder: Path, image_size: int) -> None:
    """SavedModel with the float32 ``serve`` endpoint and two raw-image endpoints."""
    archive = OrderedExportArchive(model)
    archive.track(model)
    pixels = tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name="pixels")
    # The raw-image endpoints call ``serve``: the model is traced once, not once per endpoint.
    serve = archive.add_endpoint(SERVE_ENDPOINT, model.__call__, [pixels])

    def serve_uint8(images: tf.Tensor) -> tf.Tensor:
        return serve(tf.cast(resize_uint8(images, image_size), tf.float32))

    def serve_encoded(encoded: tf.Tensor) -> tf.Tensor:
        images = tf.map_fn(lambda data: resize_uint8(decode_rgb(data), image_size), encoded,
                           fn_output_signature=tf.TensorSpec((image_size, image_size, 3),
                                                             tf.uint8))
        return serve(tf.cast(images, tf.float32))

    archive.add_endpoint("serve_uint8", serve_uint8,
                         [tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")])
    archive.add_endpoint("serve_encoded", serve_encoded,
                         [tf.TensorSpec((None,), tf.string, name="encoded")])
    quiet_write(archive, folder)
    (folder / SAVED_MODEL_EXTRA).mkdir(exist_ok=True)
    logger.info("SavedModel %s: endpoints %s (serving_default = %s)", folder,
                [SERVE_ENDPOINT, "serve_uint8", "serve_encoded"], SERVE_ENDPOINT)


class OrderedExportArchive(keras.export.ExportArchive):
    """An ``ExportArchive`` that writes the same bytes for the same model.

    Keras 3.3 lists the SavedModel's variables in the order the traced functions captured
    them, which follows object ids: two exports of one model wrote different
    ``variables.data`` and ``saved_model.pb`` files (so DVC saw a new export every run). Here they
    follow the model's own variable order."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__()
        self.order = {id(variable.value): index
                      for index, variable in enumerate(model.variables)}

    def _filter_and_track_resources(self) -> None:
        super()._filter_and_track_resources()
        tracked = self._tf_trackable
        unknown = [v.name for v in tracked._all_variables if id(v) not in self.order]
        if unknown:
            raise ExportParityError(f"Variables outside the model in the SavedModel: {unknown}")
        tracked._all_variables = sorted(tracked._all_variables, key=lambda v: self.order[id(v)])


def quiet_write(archive: keras.export.ExportArchive, folder: Path) -> None:
    """Write the archive without Keras printing every captured variable to stdout, and without
    custom gradients: a serving model is never differentiated, and tracing one gradient function
    per swish layer (EfficientNetV2) took ~40 % of the write."""
    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        archive.write_out(str(folder),
                          options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    finally:
        if interactive:
            keras.config.enable_interactive_logging()


def write_tflite(saved_model: Path, target: Path, quantize: bool) -> None:
    """TFLite from the SavedModel's ``serve`` endpoint; dynamic-range int8 when ``quantize``."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model),
                                                         signature_keys=[SERVE_ENDPOINT])
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    content = converter.convert()
    with atomic_path(target, suffix=".tflite") as tmp:
        tmp.write_bytes(content)


def artefacts(folder: Path) -> dict[str, Path]:
    """The exported artefacts present in ``folder``, by name."""
    found = {"keras": folder / MODEL_FILE, "saved_model": folder / SAVED_MODEL_DIR,
             "tflite_float32": folder / TFLITE_FLOAT32, "tflite_int8": folder / TFLITE_INT8}
    return {name: path for name, path in found.items() if path.exists()}


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


#: Artefacts run on the first validation batch only: the graph and weights of ``serve``.
ONE_BATCH = ("keras", "saved_model_uint8")
#: The splits each artefact predicts (``model.keras`` and ``serve_uint8``: a batch of the first).
CHECKED_SPLITS = {"saved_model": RECORDED_SPLITS}


def parity_report(folder: Path, candidate: tuple[str, keras.Model], manifest: Manifest,
                  params: Params) -> dict:
    """Per artefact: size, the images it predicted per split, and its agreement / max |prob
    diff| with the predictions ``candidate`` (its stage's name, its loaded model) recorded."""
    stage, model = candidate
    found = artefacts(folder)
    report = {name: {"file": path.name, "bytes": size_of(path)} for name, path in found.items()}
    recorded = recorded_probabilities(params, stage, manifest)
    runners = artefact_runners(found, model)
    outputs: dict[str, dict[str, np.ndarray]] = {name: {} for name in runners}
    for split in RECORDED_SPLITS:
        checked = {name: run for name, run in runners.items()
                   if split in CHECKED_SPLITS.get(name, (VALIDATION,))}
        for name, values in split_outputs(manifest, split, params, checked).items():
            outputs[name][split] = values
    for name, by_split in outputs.items():
        entry = report.setdefault(name, {"file": f"{SAVED_MODEL_DIR} (serve_uint8)"})
        ours = np.concatenate(list(by_split.values()))
        theirs = np.concatenate([recorded[split][:len(v)] for split, v in by_split.items()])
        entry["images"] = {split: int(len(values)) for split, values in by_split.items()}
        entry.update(compare(theirs, ours, params.evaluate.threshold))
    return {"reference": {"file": getattr(params.paths, f"{stage}_predictions"),
                          "model": stage},
            "validation_images": int(len(recorded[VALIDATION])), "artefacts": report,
            "thresholds": {"float32_tolerance": params.export.float32_tolerance,
                           "int8_min_agreement": params.export.int8_min_agreement}}


def recorded_probabilities(params: Params, stage: str, manifest: Manifest
                           ) -> dict[str, np.ndarray]:
    """``{split: class probabilities}`` that ``stage`` recorded for the validation and test
    splits (what evaluate, the model card and the gate use), each split's images in order."""
    path = params.path(f"{stage}_predictions")
    recorded = read_predictions(path)
    for split in RECORDED_SPLITS:
        if len(recorded[split].probabilities) != manifest.count(split):
            raise PredictionsError(f"{path} holds {len(recorded[split].probabilities)} {split} "
                                   f"predictions, the {split} split {manifest.count(split)} "
                                   "images: run `dvc repro`.")
    return {split: recorded[split].probabilities for split in RECORDED_SPLITS}


def artefact_runners(found: dict[str, Path], model: keras.Model
                     ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """What ``warmstart predict`` loads for each exported artefact (``model``: model.keras as
    Keras loaded it), and the SavedModel's ``serve_uint8`` endpoint fed uint8 pixels; the
    SavedModel is loaded once."""
    saved = SavedModelPredictor(found["saved_model"])  # keep it: it owns the variables
    runners: dict[str, Callable] = {"keras": model.predict_on_batch, "saved_model": saved}
    for name in ("tflite_float32", "tflite_int8"):
        if name in found:
            runners[name] = load_predictor(found[name])
    runners["saved_model_uint8"] = lambda pixels: saved.loaded.serve_uint8(
        tf.constant(pixels.astype(np.uint8))).numpy()
    return runners


def split_outputs(manifest: Manifest, split: str, params: Params,
                  runners: dict[str, Callable[[np.ndarray], np.ndarray]]) -> dict[str, np.ndarray]:
    """Every runner's class probabilities on ``split`` (:data:`ONE_BATCH` runners: on its first
    batch), in one pass over its images (each batch decoded once, memory bounded by one
    batch)."""
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    for index, (images, _) in enumerate(image_dataset(manifest, split, params.train.batch_size,
                                                      cache=False)):
        pixels = images.numpy()
        for name, runner in runners.items():
            if index == 0 or name not in ONE_BATCH:
                outputs[name].append(np.asarray(runner(pixels)))
    return {name: class_probabilities(np.concatenate(values)) for name, values in outputs.items()}


def compare(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> dict:
    agree = predict_labels(reference, threshold) == predict_labels(candidate, threshold)
    return {"top1_agreement": round(float(agree.mean()), 6),
            "disagreements": int((~agree).sum()),
            "max_abs_diff": float(np.abs(reference - candidate).max())}


def parity_problems(results: dict, limits: ExportParams) -> list[str]:
    """One line per artefact outside its parity bound."""
    problems = []
    for name, entry in results["artefacts"].items():
        if "top1_agreement" not in entry:
            continue
        if name == "tflite_int8":
            if entry["top1_agreement"] < limits.int8_min_agreement:
                problems.append(f"{name}: top-1 agreement {entry['top1_agreement']:.4f} < "
                                f"export.int8_min_agreement {limits.int8_min_agreement}")
        elif entry["max_abs_diff"] > limits.float32_tolerance:
            problems.append(f"{name}: max |probability difference| {entry['max_abs_diff']:.3g} "
                            f"> export.float32_tolerance {limits.float32_tolerance}")
    return problems


def parity_message(results: dict, metrics: Path) -> str:
    reference = results["reference"]
    return (f"Exported models disagree with the predictions the {reference['model']} stage "
            f"recorded in {reference['file']} (which evaluate scored):\n- "
            + "\n- ".join(results["problems"]) + f"\nThe previous export is kept; figures in "
            f"{metrics}. Set export.int8: false to skip the int8 model, or widen the bound in "
            "params.yaml if the difference is acceptable for your use.")
