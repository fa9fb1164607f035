"""The network array layout: the original loader's [S, A, L] arrays reproduced through our own standardize path."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import ConfigError
from ld_augment.io.network_layout import RELEASED, layout, recorded_layout
from ld_augment.io.standardize import standardize_image

STORED = ("RAS", "LPS", "LAS", "PIR", "SAL")


@pytest.mark.parametrize("codes", STORED)
def test_standardize_then_released_layout_is_the_original_loaders_array(reference_data, codes) -> None:
    folder = reference_data / "orientation"
    expected = np.load(folder / f"network_array_{codes}.npy")
    std = standardize_image(nib.load(str(folder / f"volume_{codes}.nii.gz")), (1.0, 1.0, 1.0))
    grid = np.asarray(std.dataobj)
    net = layout("released").to_network(grid)
    assert net.shape == expected.shape
    assert np.array_equal(net, expected)
    back = layout("released").from_network(expected)  # and back onto our grid, voxel for voxel
    assert np.array_equal(back, grid)


def test_released_layout_is_the_documented_formula_and_not_its_own_inverse(reference_data) -> None:
    summary = json.loads((reference_data / "orientation" / "summary.json").read_text())
    ras = np.arange(5 * 7 * 11).reshape(5, 7, 11)
    net = layout(RELEASED).to_network(ras)
    assert list(net.shape) == summary["cases"]["RAS"]["network_shape"]
    assert np.array_equal(net, np.flip(ras.transpose(2, 1, 0), axis=2))
    assert not np.array_equal(layout(RELEASED).to_network(net), ras.transpose(2, 1, 0))  # needs from_network


def test_crop_sizes_and_boxes_map_between_network_and_grid_order() -> None:
    sal = layout("SAL")
    assert sal.grid_shape((64, 152, 152)) == (152, 152, 64)  # 64 voxels along S, i.e. grid axis z
    assert sal.network_shape((152, 152, 64)) == (64, 152, 152)
    grid = np.zeros((10, 8, 6), bool)
    grid[1:4, 2:7, 3:5] = True
    lo, hi = sal.box_to_network((1, 2, 3), (4, 7, 5), grid.shape)
    net = sal.to_network(grid)
    idx = np.argwhere(net)
    assert tuple(idx.min(0)) == lo and tuple(idx.max(0) + 1) == hi


@pytest.mark.parametrize("codes", ["RAS", "LPS", "SAL", "PIR", "ilp"])
def test_every_layout_round_trips_with_channel_axes(codes) -> None:
    arr = np.random.default_rng(0).normal(size=(2, 3, 4, 5, 6))
    lay = layout(codes)
    assert np.array_equal(lay.from_network(lay.to_network(arr)), arr)
    assert lay.to_network(arr).shape[:2] == (2, 3)


def test_legacy_orientation_records_convert() -> None:
    assert recorded_layout({"orientation": "LPS"}).codes == "LPS"  # the old mirror of axes 0 and 1
    assert recorded_layout({"orientation": "RAS"}).codes == "RAS"
    assert recorded_layout({}).codes == "RAS"
    assert recorded_layout({"layout": "SAL", "orientation": "RAS"}).codes == "SAL"
    arr = np.arange(24).reshape(2, 3, 4)
    assert np.array_equal(layout("LPS").to_network(arr), np.flip(arr, axis=(0, 1)))


@pytest.mark.parametrize("bad", ["XYZ", "SSA", "RA", "", "lpsx"])
def test_bad_layout_names_are_refused(bad) -> None:
    with pytest.raises(ConfigError, match="axis codes"):
        layout(bad)
