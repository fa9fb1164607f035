"""ComposedArray / PreparedPatch: the load-time composition behaves like the full array it stands for."""

from __future__ import annotations

import numpy as np
import pytest

from nnunet_trainers.composed import ComposedArray, PreparedPatch


@pytest.fixture()
def arrays():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 20, 18, 16)).astype(np.float32)
    patch = rng.normal(size=(1, 5, 4, 6)).astype(np.float32)
    start = np.array([7, 3, 9])
    full = base.copy()
    full[:, 7:12, 3:7, 9:15] = patch
    return ComposedArray(base, patch, start), full, base


@pytest.mark.parametrize("index", [
    (slice(None), slice(0, 20), slice(0, 18), slice(0, 16)),
    (slice(None), slice(5, 15), slice(2, 10), slice(8, 16)),      # overlaps the patch
    (slice(None), slice(0, 5), slice(0, 5), slice(0, 5)),         # misses it
    (0, 9), (slice(None), 8, slice(None), slice(10, 12)), (Ellipsis, 10), (slice(None), slice(-5, None)),
    (slice(None), slice(0, 20, 2)),                                # strided: falls back to the full array
])
def test_slices_equal_the_composed_full_array(arrays, index):
    comp, full, base = arrays
    before = base.copy()
    np.testing.assert_array_equal(comp[index], full[index])
    np.testing.assert_array_equal(base, before)                    # the source is never written
    assert comp.shape == full.shape and np.asarray(comp).dtype == full.dtype


def test_crop_and_pad_of_nnunet_sees_the_patch(arrays):
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    comp, full, _ = arrays
    for bbox in ([[4, 20], [-3, 13], [6, 22]], [[-10, 6], [0, 16], [0, 16]]):
        np.testing.assert_array_equal(crop_and_pad_nd(comp, bbox, 0), crop_and_pad_nd(full, bbox, 0))


def test_merged_locations_replace_the_source_inside_the_patch():
    seg = np.zeros((1, 4, 4, 4), np.int16)
    own = {2: np.array([[0, 11, 11, 11]]), 1: np.array([[0, 10, 10, 12]])}
    src = {1: np.array([[0, 1, 1, 1], [0, 11, 12, 13], [0, 20, 20, 20]]), 2: np.zeros((0,))}
    for drop in (None, {1: [1]}):
        merged = PreparedPatch(seg, seg, np.array([10, 10, 10]), own, drop).merged_locations(src)
        assert np.asarray(merged[1]).tolist() == [[0, 1, 1, 1], [0, 20, 20, 20], [0, 10, 10, 12]]
        assert [merged[1][i].tolist() for i in range(len(merged[1]))] == np.asarray(merged[1]).tolist()
        assert np.asarray(merged[2]).tolist() == [[0, 11, 11, 11]] and np.asarray(merged[2]).dtype.kind == "i"
    untouched = {3: np.array([[0, 1, 2, 3]])}
    merged = PreparedPatch(seg, seg, np.array([10, 10, 10]), {}, None).merged_locations(untouched)
    assert merged[3] is untouched[3]                               # no copy of classes the patch leaves alone


def test_merged_rows_index_like_the_array():
    from nnunet_trainers.composed import MergedRows

    rng = np.random.default_rng(1)
    src = rng.integers(0, 50, (40, 4))
    own = rng.integers(0, 50, (5, 4))
    drop = np.array([0, 3, 4, 5, 20, 39])
    rows = MergedRows(src, drop, own)
    full = np.concatenate([np.delete(src, drop, axis=0), own])
    assert len(rows) == len(full) == 39
    assert all(np.array_equal(rows[i], full[i]) for i in range(-len(full), len(full)))
    with pytest.raises(IndexError):
        rows[len(full)]
