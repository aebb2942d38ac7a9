"""The caches' on-disk format: fixed-row ``.npy`` shards written and read a batch at a time.

The writer holds no rows (memory stays one batch whatever the row count), the reader returns
exactly the rows asked for in the order asked, across shard boundaries, and the batches streamed
for training are the ones today's in-memory index shuffle gave.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from warmstart.modeling.array_shards import (
    ArraySpec,
    CacheWriter,
    ShardedArray,
    ShardWriter,
    contiguous_runs,
    open_split,
)
from warmstart.modeling.cache_dataset import cached_batches
from warmstart.modeling.training import skip_epochs


def written(folder: Path, values: np.ndarray, shard_rows: int, batch: int = 7,
            name: str = "boundary_0") -> ShardedArray:
    """``values`` written in batches of ``batch`` rows as shards of ``shard_rows`` rows."""
    spec = ArraySpec(name, len(values), values.shape[1:], values.dtype.str, shard_rows)
    with CacheWriter([ShardWriter(folder, "train", spec)]) as writer:
        for start in range(0, len(values), batch):
            writer.append([values[start:start + batch]])
    return ShardedArray(folder, "train", spec)


@pytest.fixture
def values() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(53, 3, 2, 4)).astype(np.float16)


def test_shards_are_plain_npy_files_of_fixed_rows(tmp_path: Path, values: np.ndarray) -> None:
    array = written(tmp_path, values, shard_rows=10)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.npy"))
    assert names == [f"train/boundary_0-{i:05d}-of-00006.npy" for i in range(6)]
    assert [len(np.load(tmp_path / n)) for n in names] == [10, 10, 10, 10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([np.load(tmp_path / n) for n in names]),
                                  values)
    np.testing.assert_array_equal(array.read(), values)
    assert array.shape == values.shape and array.dtype == np.float16


def test_a_split_is_read_from_its_shards_alone(tmp_path: Path, values: np.ndarray) -> None:
    """No info file needed: names and .npy headers give every array's rows, shape, dtype."""
    written(tmp_path, values, shard_rows=10)
    written(tmp_path, np.arange(53), shard_rows=20, name="labels")
    arrays = open_split(tmp_path, "train")
    assert sorted(arrays) == ["boundary_0", "labels"]
    assert arrays["boundary_0"].spec == ArraySpec("boundary_0", 53, (3, 2, 4), "<f2", 10)
    np.testing.assert_array_equal(arrays["labels"].read(), np.arange(53))
    (tmp_path / "train" / "boundary_0-00003-of-00006.npy").unlink()
    with pytest.raises(OSError, match=r"shards \[0, 1, 2, 4, 5\] of boundary_0, not all 6"):
        open_split(tmp_path, "train")


@pytest.mark.parametrize("shard_rows", [1, 10, 53, 1000])
def test_take_returns_the_rows_asked_in_the_order_asked(tmp_path: Path, values: np.ndarray,
                                                        shard_rows: int) -> None:
    array = written(tmp_path, values, shard_rows)
    rng = np.random.default_rng(1)
    for indices in (rng.permutation(53)[:16], np.arange(20, 37), np.array([52, 0, 52, 9]),
                    np.array([], dtype=np.int64)):
        np.testing.assert_array_equal(array.take(indices), values[indices])
    with pytest.raises(IndexError, match="53"):
        array.take(np.array([53]))


def test_contiguous_rows_of_a_shard_are_one_read() -> None:
    assert contiguous_runs(np.array([3, 4, 5, 9, 10, 11]), shard_rows=10) == [
        (0, 3, 3), (3, 4, 9), (4, 6, 10)]
    assert contiguous_runs(np.array([], dtype=np.int64), shard_rows=10) == []


def test_strings_and_labels_round_trip(tmp_path: Path) -> None:
    paths = np.array(["train/cats/1.jpg", "train/dogs/ü.jpg", "x"], dtype=np.str_)
    labels = np.array([0, 1, 1], dtype=np.int64)
    assert written(tmp_path, paths, 2, name="paths").read().tolist() == paths.tolist()
    np.testing.assert_array_equal(written(tmp_path, labels, 2, name="labels").take([2, 0]),
                                  [1, 0])


def test_an_empty_split_has_one_empty_shard(tmp_path: Path) -> None:
    array = written(tmp_path, np.zeros((0, 4), np.float32), shard_rows=10)
    assert array.read().shape == (0, 4) and array.take(np.array([], np.int64)).shape == (0, 4)


def test_the_writer_refuses_a_wrong_row_count_or_shape(tmp_path: Path) -> None:
    spec = ArraySpec("features", 5, (4,), "<f4", 2)
    with pytest.raises(ValueError, match="3 rows written, 5 expected"), \
            CacheWriter([ShardWriter(tmp_path, "train", spec)]) as writer:
        writer.append([np.zeros((3, 4))])
    writer = ShardWriter(tmp_path, "train", spec)
    with pytest.raises(ValueError, match="more than the 5 rows"):
        writer.append(np.zeros((6, 4)))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        writer.append(np.zeros((1, 3)))


def test_a_shard_cut_short_is_refused_naming_it(tmp_path: Path, values: np.ndarray) -> None:
    written(tmp_path, values, shard_rows=10)
    shard = tmp_path / "train" / "boundary_0-00002-of-00006.npy"
    shard.write_bytes(shard.read_bytes()[:-8])
    spec = ArraySpec("boundary_0", 53, values.shape[1:], values.dtype.str, 10)
    with pytest.raises(OSError, match="00002-of-00006.*re-run the features stage"):
        ShardedArray(tmp_path, "train", spec)


def test_the_writer_holds_no_rows_whatever_their_number(tmp_path: Path) -> None:
    """Peak Python allocations while writing 8x more rows stay those of one batch."""
    batch = np.ones((64, 32, 32), np.float32)  # 256 KiB

    def peak(batches: int) -> int:
        spec = ArraySpec("boundary_0", 64 * batches, batch.shape[1:], "<f2", 100)
        folder = tmp_path / str(batches)
        folder.mkdir()
        tracemalloc.start()
        with CacheWriter([ShardWriter(folder, "train", spec)]) as writer:
            for _ in range(batches):
                writer.append([batch])
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(4), peak(32)
    assert large < 1.1 * small + 16 * 2**10, (small, large)
    assert large < 2 * batch.nbytes  # the float16 copy of one batch, not the 8 MiB written


def in_memory_batches(values: np.ndarray, labels: np.ndarray, batch: int,
                      seed: int | None) -> tf.data.Dataset:
    """Today's (format 1) prefix_dataset: the arrays as tf.constants, rows gathered by a
    shuffled index."""
    arrays, label_values = tf.constant(values), tf.constant(labels)
    order = tf.data.Dataset.range(len(labels))
    if seed is not None:
        order = order.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return order.batch(batch).map(lambda i: ((tf.cast(tf.gather(arrays, i), tf.float32),),
                                             tf.gather(label_values, i)))


def epochs_of(data: tf.data.Dataset, epochs: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    return [[(x[0].numpy(), y.numpy()) for x, y in data] for _ in range(epochs)]


@pytest.mark.parametrize("seed", [1337, None])
def test_streamed_batches_are_the_in_memory_ones_epoch_by_epoch(
        tmp_path: Path, values: np.ndarray, seed: int | None) -> None:
    labels = np.arange(53, dtype=np.int64) % 3
    streamed = cached_batches([written(tmp_path, values, 10)], labels, 8, seed)
    expected = epochs_of(in_memory_batches(values, labels, 8, seed), 3)
    got = epochs_of(streamed, 3)
    for epoch_got, epoch_expected in zip(got, expected, strict=True):
        assert len(epoch_got) == 7
        for (x, y), (x0, y0) in zip(epoch_got, epoch_expected, strict=True):
            assert x.dtype == np.float32
            np.testing.assert_array_equal(x, x0)
            np.testing.assert_array_equal(y, y0)
    if seed is not None:
        assert not np.array_equal(got[0][0][1], got[1][0][1]), "reshuffled each epoch"
        resumed = cached_batches([written(tmp_path, values, 10)], labels, 8, seed)
        skip_epochs(resumed, 2)
        np.testing.assert_array_equal(epochs_of(resumed, 1)[0][0][0], expected[2][0][0])
