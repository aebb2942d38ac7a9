"""The per-image store: a grown dataset reuses what is unchanged and writes the same bytes as a
run from scratch; every key part invalidates; eviction is least recently used first; a corrupt
entry is recomputed, never used."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tests.helpers.files import folder_bytes
from tests.helpers.images import CLASS_COLOURS, write_image
from tests.helpers.models import calibrated_base
from tests.helpers.project import prepare_project
from warmstart import store as store_module
from warmstart.config.params import Params, load_params
from warmstart.data.manifest import ManifestError
from warmstart.layout import SPLITS, index_file
from warmstart.modeling import feature_store
from warmstart.modeling.model import fine_tune_index
from warmstart.modeling.training import seed_everything
from warmstart.stages import features as features_stage
from warmstart.stages import preprocess as preprocess_stage
from warmstart.stages.features import batch_forward, one_pass_extractor, run_features
from warmstart.stages.ingest import run_ingest
from warmstart.stages.preprocess import run_preprocess
from warmstart.stages.validate import run_validate
from warmstart.store import Store
from warmstart.validation.table import build_table

#: Outputs a run with a warm store must write byte for byte as a run from scratch: every file
#: (the caches' shards and info files too; what differs between runs is in the details files).
COMPARED = ("validated", "validation_report", "validation_html", "processed", "features",
            "prefix")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project run through features once (data-calibrated base: non-trivial
    activations); its store holds every image."""
    root = tmp_path_factory.mktemp("store")
    weights = root / "base.weights.h5"
    calibrated_base().save_weights(weights)
    prepare_project(root, upto="features", base={"weights": str(weights)},
                    validate={"skew_jsd": None, "skew_linf": None})
    return root


@pytest.fixture
def project(prepared: Path, tmp_path: Path) -> Params:
    """A copy of the prepared project (source, weights, outputs and store) of its own."""
    root = tmp_path / "copy"
    shutil.copytree(prepared, root, symlinks=True)
    raw = yaml.safe_load((root / "work" / "params.yaml").read_text())
    raw["data"]["source"] = str(root / "src")
    raw["base"]["weights"] = str(root / "base.weights.h5")
    (root / "work" / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(root / "work" / "params.yaml")


def details(params: Params, stage: str) -> dict:
    return json.loads(params.path(f"{stage}_details").read_text())


def counts(params: Params, stage: str) -> tuple[int, int]:
    found = details(params, stage)
    return found["computed_images"], found["reused_images"]


def outputs(params: Params) -> dict[str, bytes]:
    found = {f"{key}/{name}": data for key in COMPARED
             for name, data in folder_bytes(params.path(key)).items()}
    assert any(name.endswith(".npy") for name in found)  # the caches' shards are compared
    return found


def grow(params: Params, added: int) -> None:
    """Add ``added`` images to the source's training split and change one image's content."""
    source = Path(params.data.source)
    for index in range(added):
        write_image(source / "train" / "cats" / f"new.{index}.jpg", CLASS_COLOURS["cats"],
                    (45, 41), seed=1000 + index)
    write_image(source / "train" / "dogs" / "dogs.0.jpg", CLASS_COLOURS["dogs"], (50, 44),
                seed=2000)


def run_three(params: Params, baseline: Path | None) -> None:
    """validate (against the drift ``baseline``, None: none, as on the first run; a passing
    validate replaces it, and its reports compare with it), preprocess and features."""
    shutil.rmtree(params.path("validation_baseline"))
    if baseline:
        shutil.copytree(baseline, params.path("validation_baseline"))
    for stage in (run_validate, run_preprocess, run_features):
        stage(params)


def saved_baseline(params: Params) -> Path:
    saved = params.root.parent / "baseline_before"
    shutil.copytree(params.path("validation_baseline"), saved)
    return saved


def test_a_grown_dataset_reuses_the_old_images_and_writes_the_same_bytes(
        project: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    images = details(project, "preprocess")["images"]
    baseline = saved_baseline(project)
    grow(project, added=3)
    run_ingest(project)
    pixels_read = counted(monkeypatch, feature_store, "selected_pixels")
    run_three(project, baseline)
    # 3 new images and 1 changed one computed; all others reused, by each stage.
    for stage in ("validate", "preprocess", "features"):
        assert counts(project, stage) == (4, images - 1), stage
    assert len(pixels_read) == 4  # features reads the pixels of the misses only
    warm = outputs(project)

    shutil.rmtree(project.path("store"))
    run_three(project, baseline)
    for stage in ("validate", "preprocess", "features"):
        assert counts(project, stage) == (images + 3, 0), stage
    scratch = outputs(project)
    assert sorted(warm) == sorted(scratch)
    assert [name for name in warm if warm[name] != scratch[name]] == []


def counted(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list:
    """Everything the generator ``module.name`` yields from now on, collected as it goes."""
    seen, original = [], getattr(module, name)

    def counting(*args: object, **kwargs: object) -> Iterator:
        for item in original(*args, **kwargs):
            seen.append(item)
            yield item

    monkeypatch.setattr(module, name, counting)
    return seen


def test_an_unchanged_rerun_computes_nothing(project: Params,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    before = outputs(project)
    pixels_read = counted(monkeypatch, feature_store, "selected_pixels")
    run_three(project, baseline=None)  # as the prepared project's first run
    assert pixels_read == []
    assert counts(project, "features")[0] == counts(project, "preprocess")[0] == 0
    assert counts(project, "validate")[0] == 0
    assert outputs(project) == before


# ---- batch composition --------------------------------------------------------------------

def test_an_images_features_do_not_depend_on_its_batch(tmp_path: Path) -> None:
    """The store computes only misses, in batches unlike a run from scratch: an image's outputs
    must be the same bytes with other neighbours and in a smaller (last) batch, on CPU."""
    seed_everything(1337, True)
    base = calibrated_base()
    extractor = one_pass_extractor(base, fine_tune_index(base, 100))
    forward = batch_forward(extractor)
    images = np.random.default_rng(0).uniform(0, 255, (24, 32, 32, 3)).astype(np.float32)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return [o.numpy() for o in tf.nest.flatten(forward(batch))]

    reference = run(images[:8])
    assert np.abs(reference[0]).max() > 1e-3  # real activations, not a near-zero random base
    cases = {"other neighbours": (np.concatenate([images[16:20], images[:4]]), slice(4, 8)),
             "smaller last batch": (images[:3], slice(0, 3)), "alone": (images[:1], slice(0, 1)),
             "larger batch": (images[:24], slice(0, 8))}
    for name, (batch, rows) in cases.items():
        count = rows.stop - rows.start
        for ours, theirs in zip(reference, run(batch), strict=True):
            assert ours[:count].tobytes() == theirs[rows].tobytes(), name


# ---- invalidation by each key part --------------------------------------------------------

def with_params(params: Params, section: str, **values) -> Params:
    raw = yaml.safe_load((params.root / "params.yaml").read_text())
    raw[section].update(values)
    (params.root / "params.yaml").write_text(yaml.safe_dump(raw))
    return load_params(params.root / "params.yaml")


def test_preprocess_recomputes_for_a_new_size_or_decoder(project: Params,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    images = counts(project, "preprocess")[0]
    run_preprocess(with_params(project, "preprocess", image_size=40))
    assert counts(project, "preprocess") == (images, 0)
    monkeypatch.setattr(preprocess_stage, "code_digest", lambda *objects: "another decoder")
    run_preprocess(project)
    assert counts(project, "preprocess") == (images, 0)
    monkeypatch.undo()
    run_preprocess(project)
    assert counts(project, "preprocess") == (0, images)


@pytest.mark.parametrize(("section", "values"), [
    ("base", {"alpha": 0.5, "weights": "none"}),        # architecture variant (and weights)
    ("finetune", {"fine_tune_at": 60}),                  # the cut
    ("finetune", {"cache_dtype": "float32"}),            # the training split's dtype
])
def test_features_recompute_for_each_key_part(project: Params, section: str,
                                              values: dict) -> None:
    images = counts(project, "features")[0]
    changed = with_params(project, section, **values)
    run_features(changed)
    computed, reused = counts(changed, "features")
    if values.get("cache_dtype"):  # only the training split's boundary dtype changes
        assert computed == project_split_count(project, "train") and reused > 0
    else:
        assert (computed, reused) == (images, 0)


def project_split_count(params: Params, split: str) -> int:
    manifest = json.loads((params.path("processed") / "manifest.json").read_text())
    return manifest["splits"][split]["count"]


def test_features_recompute_when_the_weights_file_changes(project: Params) -> None:
    images = counts(project, "features")[0]
    calibrated_base(seed=1).save_weights(Path(project.base.weights))  # rewritten in place
    run_features(project)
    assert counts(project, "features") == (images, 0)


def test_features_recompute_when_the_extractor_code_changes(project: Params,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    images = counts(project, "features")[0]
    original = features_stage.image_parts
    monkeypatch.setattr(features_stage, "image_parts",
                        lambda *args: {**original(*args), "code": "edited"})
    run_features(project)
    assert counts(project, "features") == (images, 0)


def test_a_validate_row_is_recomputed_for_a_new_pixel_limit_or_content(project: Params) -> None:
    store = Store.of(project)
    raw, limits = project.path("raw"), project.validate
    table = build_table(raw, SPLITS, limits, store)
    assert (store.computed, store.reused) == (0, len(table))
    fresh = Store.of(project)
    smaller = build_table(raw, SPLITS, with_params(project, "validate",
                                                   max_image_pixels=100).validate, fresh)
    assert (fresh.computed, fresh.reused) == (len(table), 0)
    assert set(smaller["status"]) == {"too_many_pixels"}
    first = raw / table["path"].iloc[0]
    write_image(first, (10, 200, 10), (33, 35), seed=77)
    again = Store.of(project)
    rows = build_table(raw, SPLITS, limits, again)
    assert (again.computed, again.reused) == (1, len(table) - 1)
    assert rows["sha256"].iloc[0] != table["sha256"].iloc[0]


# ---- bounded, atomic, verified ------------------------------------------------------------

def test_eviction_keeps_the_limit_least_recently_used_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", max_bytes=10_000, enabled=True)
    keys = [store.key("test", f"{i:064x}", {}) for i in range(5)]
    for age, key in enumerate(keys):
        store.put(key, bytes(3_000))
        os.utime(store.path(key), ns=(10**18 + age * 10**9,) * 2)  # key 0 the oldest
    assert store.get(keys[0]) is not None  # a hit: now the most recently used
    store.evict()
    kept = [key for key in keys if store.contains(key)]
    assert kept == [keys[0], keys[3], keys[4]]
    assert sum(store.path(k).stat().st_size for k in kept) <= 10_000


def test_the_store_is_walked_only_when_it_may_be_over_its_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a walk the store records its size; later stages add what they wrote and walk it
    (to evict) only when that bound is over ``max_bytes``."""
    walks = []
    original = store_module._entries
    monkeypatch.setattr(store_module, "_entries",
                        lambda folder: walks.append(1) or original(folder))

    def stage(*numbers: int) -> Store:
        store = Store(tmp_path / "store", max_bytes=10_000, enabled=True)
        for number in numbers:
            store.put(store.key("test", f"{number:064x}", {}), bytes(3_000))
        store.evict()
        return store

    stage(0)
    assert len(walks) == 1  # no size on record yet
    stage(1, 2)
    assert len(walks) == 1  # 3 entries of ~3 KB: under the limit, no walk
    store = stage(3, 4)
    assert len(walks) == 2  # 5 entries: maybe over, walked and evicted
    files = [p for p in (tmp_path / "store" / "test").rglob("*") if p.is_file()]
    assert len(files) == 3 and sum(p.stat().st_size for p in files) <= 10_000
    assert json.loads((tmp_path / "store" / store_module.SIZE_FILE).read_text()) == {
        "bytes": sum(p.stat().st_size for p in files)}
    assert store.written == 0


def test_a_truncated_entry_is_recomputed_not_used(project: Params) -> None:
    before = outputs(project)
    store = project.path("store")
    entries = sorted(p for p in (store / "pixels").rglob("*") if p.is_file())
    entries[0].write_bytes(entries[0].read_bytes()[:-10])  # a torn write
    features = sorted(p for p in (store / "features").rglob("*") if p.is_file())
    features[0].write_bytes(b"")
    run_preprocess(project)
    run_features(project)
    assert counts(project, "preprocess")[0] == 1 and counts(project, "features")[0] == 1
    assert outputs(project) == before


def test_a_disabled_store_computes_everything_and_keeps_nothing(project: Params) -> None:
    shutil.rmtree(project.path("store"))
    off = with_params(project, "store", enabled=False)
    run_preprocess(off)
    assert counts(off, "preprocess") == (details(off, "preprocess")["images"], 0)
    assert not off.path("store").exists()


def test_a_stored_pixel_entry_equals_a_fresh_decode(project: Params) -> None:
    """What preprocess takes from the store is what the decoder makes of the file today."""
    from warmstart.data.decode import load_image
    from warmstart.hashing import sha256_of
    from warmstart.store import unpack_arrays

    store, size = Store.of(project), project.preprocess.image_size
    file = sorted((project.path("raw") / "train" / "cats").glob("*.jpg"))[0]
    key = store.key("pixels", sha256_of(file), preprocess_stage.pixel_parts(size))
    stored = unpack_arrays(store.get(key))[0]
    assert stored.tobytes() == load_image(str(file), size).numpy().tobytes()


def test_packed_arrays_come_back_exactly() -> None:
    from warmstart.store import pack_arrays, unpack_arrays

    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4) / 7, np.float16([[1.5, -2.25]]),
              np.arange(24, dtype=np.uint8).reshape(2, 4, 3), np.array(3.0)]
    back = unpack_arrays(pack_arrays(arrays))
    assert [(a.dtype, a.shape, a.tobytes()) for a in back] == \
        [(a.dtype, a.shape, a.tobytes()) for a in arrays]


def test_processed_data_without_its_index_is_refused_naming_the_fix(project: Params) -> None:
    """An older preprocess wrote no index: features says so, never reads stale keys."""
    index = project.path("processed") / index_file("train")
    index.unlink()
    with pytest.raises(ManifestError, match=r"train-index\.json is missing.*dvc repro preprocess"):
        run_features(project)
