"""Tiny projects: shrunken params, and a synthetic dataset taken through the first stages.

Importing this module stays cheap (the Prefect and params tests use only ``tiny_params``):
TensorFlow and TFDV are imported when a project is prepared.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.helpers.images import make_dataset
from tests.helpers.shared import REPO
from warmstart.config.params import Params, load_params
from warmstart.layout import TRAIN

DEFAULT_CLASSES = ("cats", "dogs")
#: Images per class and split of a prepared project: all three splits, as ingest hands them on.
DEFAULT_PER_CLASS = {"train": 12, "validation": 6, "test": 6}


def tiny_params(source: Path | str, **overrides: dict) -> dict:
    """params.yaml content for a seconds-long run: random 0.35 base, 32 px, few epochs."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = str(source)
    params["base"].update(alpha=0.35, weights="none")
    params["preprocess"].update(image_size=32, shard_size=16)
    params["train"].update(batch_size=8)
    params["transfer"].update(epochs=3, learning_rate=0.01, patience=None)
    params["finetune"].update(epochs=2, learning_rate=0.001, patience=None, fine_tune_at=100)
    # Tiny splits (a few images per class, a test split held out of 6 validation images).
    params["validate"].update(min_images_per_class=1)
    # A random-weights base cannot beat even the majority-class baseline reliably: the gate
    # promotes any tiny model.
    params["gate"].update(min_gain_over_baseline=None, min_accuracy=None, max_drop=1.0)
    for section, values in overrides.items():
        params[section].update(values)
    return params


def write_params(work: Path, source: Path | str, **overrides: dict) -> Params:
    """``work/params.yaml`` holding ``tiny_params(source, **overrides)``, loaded."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(source, **overrides)))
    return load_params(work / "params.yaml")


def prepare_project(root: Path, classes: tuple[str, ...] = DEFAULT_CLASSES,
                    per_class: dict[str, int] | None = None, upto: str = "preprocess",
                    skip_validation: bool = False, **overrides: dict) -> Params:
    """A synthetic dataset in ``root/src`` and a project in ``root/work`` (tiny params with
    ``overrides``), run from ingest through stage ``upto``; the schema is proposed from this
    data after ingest. ``skip_validation``: raw data and processed shards are written as
    ingest + preprocess write them, without running ingest, validate (slow with TFDV) or
    preprocess; the stages after preprocess then run through ``upto``."""
    from warmstart.cli import STAGES, stage_function
    from warmstart.validation.schema import propose_schema, write_schema

    source = make_dataset(root / "src", classes=classes, per_class=per_class or DEFAULT_PER_CLASS)
    params = write_params(root / "work", source, **overrides)
    names = list(STAGES)
    first = 0
    if skip_validation:
        write_processed(params, source, classes)
        first = names.index("preprocess") + 1
    for name in names[first:names.index(upto) + 1]:
        stage_function(name)(params)
        if name == "ingest":
            proposal = propose_schema(params.path("raw"), TRAIN,
                                      params.validate)
            write_schema(params.path("schema"), proposal)
    return params


def write_processed(params: Params, source: Path, classes: tuple[str, ...]) -> None:
    """Copy ``source`` to paths.raw and write its processed shards and manifest (one shard per
    split), as ingest + preprocess would."""
    import tensorflow as tf

    from warmstart.atomic import write_json
    from warmstart.data.decode import load_image
    from warmstart.data.records import pixels_sha256, serialize_example, shard_name, write_index
    from warmstart.layout import MANIFEST_FILE, SPLITS

    def write_split(split: str, files: list[Path], labels: list[int]) -> list[str]:
        name, digests = shard_name(split, 0, 1), []
        with tf.io.TFRecordWriter(str(params.path("processed") / name)) as writer:
            for file, label in zip(files, labels, strict=True):
                pixels = load_image(tf.constant(str(file)), size).numpy()
                writer.write(serialize_example(pixels, label, str(file)))
                digests.append(pixels_sha256(pixels))
        write_index(params.path("processed"), split, [str(f) for f in files], labels, digests)
        return [name]

    shutil.copytree(source, params.path("raw"))
    names, size = sorted(classes), params.preprocess.image_size
    splits = {}
    params.path("processed").mkdir(parents=True)
    for split in SPLITS:
        files = sorted((params.path("raw") / split).glob("*/*.jpg"))
        labels = [names.index(f.parent.name) for f in files]
        splits[split] = {"count": len(files), "shards": write_split(split, files, labels),
                         "shard_size": max(1, len(files)),
                         "class_counts": {name: labels.count(i) for i, name in enumerate(names)}}
    write_json(params.path("processed") / MANIFEST_FILE,
               {"classes": names, "image_size": size, "splits": splits})


def plant_features(params: Params, contradicted: float = 0.0, seed: int = 0) -> None:
    """Replace the features cache's arrays (same shapes and labels) with separable blobs: each
    class around its own random centre, so a head learns them (a random base's features are
    ~1e-11). ``contradicted``: that fraction of the VALIDATION images gets the other class's
    centre, so the validation loss rises once the head grows confident (early stopping)."""
    import numpy as np

    from tests.helpers.caches import write_feature_split
    from warmstart.layout import SPLITS, VALIDATION
    from warmstart.modeling.feature_cache import open_features

    rng = np.random.default_rng(seed)
    folder = params.path("features")
    dims = open_features(folder, SPLITS[0])[0].shape[1]
    centres = rng.normal(size=(2, dims)).astype(np.float32)
    for split in SPLITS:
        _, labels = open_features(folder, split)
        where = labels.copy()
        if split == VALIDATION:
            flip = rng.permutation(len(labels))[:round(contradicted * len(labels))]
            where[flip] = 1 - where[flip]
        noise = rng.normal(scale=0.5, size=(len(labels), dims)).astype(np.float32)
        write_feature_split(folder, split, centres[where] + noise, labels,
                            read_paths(folder, split))


def read_paths(folder: Path, split: str) -> list[str]:
    """The image paths the features cache in ``folder`` records for ``split``."""
    from warmstart.layout import PATHS_ARRAY
    from warmstart.modeling.array_shards import open_split

    return open_split(folder, split)[PATHS_ARRAY].read().tolist()
