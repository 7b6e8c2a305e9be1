"""Packed candidate arrays: stored as the entries their mask keeps, read as the padded arrays."""

import numpy as np
import pytest

from bhive import dataset, packed


def padded_example(n_jets=40, slots=6, features=3, seed=0, holes=False):
    """A zero-padded (jets, slots, features) array with its mask, written slot by slot."""
    rng = np.random.default_rng(seed)
    mask = np.arange(slots)[None, :] < rng.integers(0, slots + 1, n_jets)[:, None]
    if holes:  # masks need not be a prefix of the slots
        mask &= rng.random(mask.shape) < 0.7
    values = rng.normal(size=(n_jets, slots, features)).astype(np.float32)
    values[~mask] = 0
    return values, mask


def entries_by_hand(values, mask):
    return np.array([values[j, s] for j in range(len(mask)) for s in range(mask.shape[1]) if mask[j, s]],
                    dtype=values.dtype).reshape(-1, *values.shape[2:])


@pytest.mark.parametrize("holes", [False, True])
def test_a_packed_array_reads_as_the_padded_one(holes):
    values, mask = padded_example(holes=holes)
    entries = entries_by_hand(values, mask)
    array = packed.PackedArray(entries, mask)
    assert array.shape == values.shape and array.ndim == 3 and array.dtype == np.float32 and len(array) == 40
    assert array.nbytes == values.nbytes
    np.testing.assert_array_equal(np.asarray(array), values)
    rows = np.array([17, 3, 3, 39, 0, -1])
    np.testing.assert_array_equal(array[rows], values[rows])
    np.testing.assert_array_equal(array[[5, 2]], values[[5, 2]])
    np.testing.assert_array_equal(array[np.array([], dtype=np.int64)], values[:0])
    chosen = np.random.default_rng(1).random(40) < 0.5
    np.testing.assert_array_equal(array[chosen], values[chosen])
    np.testing.assert_array_equal(array[7], values[7])
    np.testing.assert_array_equal(array[-2], values[-2])
    # a slice stays packed, and slices of slices and rows of them are those of the padded array
    part = array[10:31]
    assert isinstance(part, packed.PackedArray) and part.shape == (21, 6, 3)
    np.testing.assert_array_equal(np.asarray(part), values[10:31])
    np.testing.assert_array_equal(part[4:9][[0, 4, 2]], values[10:31][4:9][[0, 4, 2]])
    np.testing.assert_array_equal(np.asarray(array[35:100]), values[35:])
    np.testing.assert_array_equal(np.asarray(array[30:20]), values[30:20])
    np.testing.assert_array_equal(array[::7], values[::7])
    # any other index applies to the whole padded array
    np.testing.assert_array_equal(array[..., 1], values[..., 1])
    np.testing.assert_array_equal(array[~mask], values[~mask])
    np.testing.assert_array_equal(np.concatenate([array[:12], array[12:]]), values)
    with pytest.raises(IndexError):
        array[40]
    with pytest.raises(IndexError):
        array[np.array([0, 40])]


def test_packing_helpers_agree_with_a_loop():
    values, mask = padded_example(holes=True, seed=4)
    offsets = packed.entry_offsets(mask)
    assert offsets[0] == 0 and list(np.diff(offsets)) == list(mask.sum(axis=1))
    rows = np.array([9, 1, 30, 1])
    expected = [offsets[r] + k for r in rows for k in range(mask[r].sum())]
    assert list(packed.entry_rows(offsets, rows)) == expected
    flags = np.isfinite(np.where(np.arange(int(offsets[-1])) % 7 == 3, np.nan, 0.0))
    by_hand = [all(flags[offsets[j]:offsets[j + 1]]) for j in range(len(mask))]
    assert list(packed.rows_all(flags, offsets)) == by_hand and not all(by_hand)
    selected = packed.PackedArray(entries_by_hand(values, mask), mask).select(rows)
    assert isinstance(selected, packed.PackedArray)
    np.testing.assert_array_equal(np.asarray(selected), values[rows])
    chosen = np.arange(len(mask)) % 3 == 0
    np.testing.assert_array_equal(np.asarray(packed.PackedArray(entries_by_hand(values, mask), mask).select(chosen)),
                                  values[chosen])
    np.testing.assert_array_equal(packed.unpack(entries_by_hand(values, mask), mask), values)


@pytest.mark.parametrize("shape, dtype", [((30,), np.int16), ((30, 5), bool), ((30, 0), np.float32),
                                          ((30, 4, 3), np.float32)])
def test_rows_taken_as_opaque_items_are_numpys_rows(shape, dtype):
    values = (np.random.default_rng(2).normal(size=shape) * 100).astype(dtype)
    rows = np.array([29, 0, 7, 7, 13])
    taken = packed.take_rows(values, rows)
    assert taken.dtype == values.dtype and taken.shape == (5, *shape[1:])
    np.testing.assert_array_equal(taken, values[rows])
    np.testing.assert_array_equal(packed.take_rows(values[::-1], rows), values[::-1][rows])  # not C-contiguous


def test_rows_without_values_pack_too():
    _, mask = padded_example()
    array = packed.PackedArray(np.zeros((int(mask.sum()), 0), np.float32), mask)
    assert array[[3, 1]].shape == (2, 6, 0) and np.asarray(array.select([3, 1])).shape == (2, 6, 0)
    assert np.asarray(array).shape == (40, 6, 0)


def test_entries_that_do_not_match_their_mask_are_refused():
    values, mask = padded_example()
    entries = entries_by_hand(values, mask)
    with pytest.raises(packed.PackedArrayError, match=f"keeps {len(entries)} entries but it holds {len(entries) - 1}"):
        packed.PackedArray(entries[:-1], mask)
    with pytest.raises(packed.PackedArrayError, match="boolean"):
        packed.PackedArray(entries, mask.astype(np.int8))


def write_shard(directory, arrays):
    dataset._write_shard(directory, arrays)


def test_shards_of_both_formats_open_as_padded_arrays(tmp_path):
    values, mask = padded_example(n_jets=30)
    truth = np.arange(30, dtype=np.int16)
    write_shard(tmp_path / "padded" / "shard_0000", {"cpf": values, "mask_cpf": mask, "truth": truth})
    write_shard(tmp_path / "packed" / "shard_0000", {"cpf": entries_by_hand(values, mask), "mask_cpf": mask,
                                                       "truth": truth})
    for kind in ("padded", "packed"):
        for mmap in (True, False):
            arrays = dataset.open_shard(tmp_path / kind, "shard_0000", mmap=mmap)
            assert isinstance(arrays["cpf"], packed.PackedArray) == (kind == "packed")
            np.testing.assert_array_equal(np.asarray(arrays["cpf"]), values)
            np.testing.assert_array_equal(arrays["cpf"][3:9][[5, 0]], values[3:9][[5, 0]])
    assert (tmp_path / "packed" / "shard_0000" / "cpf.npy").stat().st_size < \
        (tmp_path / "padded" / "shard_0000" / "cpf.npy").stat().st_size


def test_a_packed_shard_file_that_disagrees_with_its_mask_is_reported_by_name(tmp_path):
    values, mask = padded_example(n_jets=30)
    directory = tmp_path / "shard_0000"
    write_shard(directory, {"cpf": entries_by_hand(values, mask)[:-2], "mask_cpf": mask})
    with pytest.raises(dataset.DatasetError, match=rf"dataset file {directory / 'cpf.npy'}: its mask keeps "
                                                   rf"\d+ entries but it holds \d+: it is damaged.*--remove-output"):
        dataset.open_shard(tmp_path, "shard_0000")
    # a mask that is not boolean cannot stand for slots either
    write_shard(directory, {"cpf": entries_by_hand(values, mask), "mask_cpf": mask.astype(np.uint8)})
    with pytest.raises(dataset.DatasetError, match=rf"{directory / 'cpf.npy'}.*boolean.*damaged"):
        dataset.open_shard(tmp_path, "shard_0000")


def test_datasets_of_an_unknown_format_are_refused(tmp_path):
    dataset.write_meta(tmp_path, {"shards": []})
    assert dataset.load_meta(tmp_path)["format_version"] == dataset.FORMAT_VERSION == 2
    dataset.atomic_write_json(tmp_path / dataset.META_FILE, {"format_version": 1, "shards": []})
    assert dataset.load_meta(tmp_path)["format_version"] == 1
    dataset.atomic_write_json(tmp_path / dataset.META_FILE, {"format_version": 3, "shards": []})
    with pytest.raises(dataset.DatasetError, match="dataset format 3 is not one this code reads"):
        dataset.load_meta(tmp_path)


def test_the_loader_gives_the_same_batches_from_packed_and_padded_shards(tmp_path, monkeypatch):
    """The same dataset written padded (format 1) and packed (format 2): the same batches, in
    every stream and with either sampling."""
    from dataloaders.base import LoaderSettings
    from dataloaders.shards import ShardDataLoader
    from tests.training_data import tiny_dataset

    cfg, directory = tiny_dataset(tmp_path, monkeypatch)
    meta = dataset.load_meta(directory)
    padded = tmp_path / "padded"
    for shard in meta["shards"]:
        arrays = {key: np.asarray(values) for key, values in dataset.open_shard(directory, shard["name"]).items()}
        assert arrays["cpf"].ndim == 3 and (directory / shard["name"] / "cpf.npy").stat().st_size < arrays["cpf"].nbytes
        write_shard(padded / shard["name"], arrays)
    dataset.atomic_write_json(padded / dataset.META_FILE, {**meta, "format_version": 1})
    for sampling in ("stochastic", "loss_weight"):
        settings = LoaderSettings(batch_size=96, seed=2, validation_fraction=0.25, sampling=sampling)
        loaders = [ShardDataLoader(d, ("global", "cpf", "vtx"), cfg.classes, settings) for d in (directory, padded)]
        for stream in (lambda loader: loader.train_batches(1), lambda loader: loader.validation_batches(),
                       lambda loader: loader.inference_batches()):
            packed_batches, padded_batches = (list(stream(loader)) for loader in loaders)
            assert len(packed_batches) == len(padded_batches) > 2
            for one, other in zip(packed_batches, padded_batches):
                assert one.keys() == other.keys()
                for key in one:
                    np.testing.assert_array_equal(one[key], other[key])
