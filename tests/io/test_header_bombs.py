"""Issue 22 (memory bombs): every NIfTI input is judged by its header before a voxel is allocated.

The probes: a 201-byte gzip segmentation claiming 2000x2000x1000 voxels took 4 GB before failing; a CT of
15 mm voxels (a 1.8 m field of view) was accepted and resampled towards 5 GB. Each test bounds the memory the
refusal may take with tracemalloc, so a regression that reads the voxels first fails here, not in swap.
"""

from __future__ import annotations

import gzip
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import InputError
from ld_augment.io.nifti import MAX_FIELD_OF_VIEW_MM, check_same_grid, load_ct, load_label_map, open_header
from ld_augment.settings import MAX_MEMORY_ENV

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def _ct(shape=(24, 20, 12)) -> np.ndarray:
    data = np.full(shape, -1000, np.int16)
    data[4:-4, 4:-4, 3:-3] = 40
    data[shape[0] // 2, shape[1] // 2, shape[2] // 2] = 900
    return data


def _header_bytes(shape, dtype, affine) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    header.set_data_offset(352)
    return header.binaryblock + b"\0" * 4  # the 4 extension bytes up to vox_offset 352


def gzip_bomb(path: Path, shape=(2000, 2000, 1000), dtype=np.uint8, affine=AFFINE) -> Path:
    """The probe's file: a valid gzip NIfTI header declaring 4e9 voxels, followed by a few bytes of data."""
    path.write_bytes(gzip.compress(_header_bytes(shape, dtype, affine) + b"\0" * 64, compresslevel=9))
    return path


def sparse_nii(path: Path, shape, dtype, affine) -> Path:
    """An uncompressed .nii whose voxels are a hole in the file: full size on paper, nothing on disk."""
    with open(path, "wb") as fh:
        fh.write(_header_bytes(shape, dtype, affine))
        fh.truncate(352 + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return path


def _refused_cheaply(func, *args, match: str, max_mb: float = 20.0, **kwargs) -> str:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(InputError, match=match) as err:
            func(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    assert peak < max_mb * 2**20, f"refusal took {peak / 2**20:.0f} MB"
    message = str(err.value)
    assert "\n" not in message
    return message


def test_tiny_gzip_segmentation_claiming_4e9_voxels_fails_at_the_header(tmp_path):
    bomb = gzip_bomb(tmp_path / "seg.nii.gz")
    assert bomb.stat().st_size < 400
    message = _refused_cheaply(load_label_map, bomb, name="segmentation", match="cannot hold")
    assert str(bomb) in message and "(2000, 2000, 1000)" in message and "truncated" in message


def test_segmentation_on_another_grid_than_its_ct_is_refused_before_reading(tmp_path):
    ct = nib.Nifti1Image(_ct(), AFFINE)
    seg = tmp_path / "seg.nii"
    nib.save(nib.Nifti1Image(np.zeros((300, 300, 100), np.uint8), AFFINE), str(seg))  # 9 MB of voxels
    message = _refused_cheaply(load_label_map, seg, name="segmentation", like=ct, match="different shapes",
                               max_mb=4)
    assert str(seg) in message


def test_header_over_the_memory_budget_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(_ct((128, 128, 64)), AFFINE), str(path))  # 2 MB of int16
    monkeypatch.setenv(MAX_MEMORY_ENV, "0.001")
    message = _refused_cheaply(load_ct, path, match="over the limit", max_mb=1)
    assert MAX_MEMORY_ENV in message and "(128, 128, 64)" in message


def test_truncated_uncompressed_file_is_refused(tmp_path):
    path = tmp_path / "cut.nii"
    nib.save(nib.Nifti1Image(_ct(), AFFINE), str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _refused_cheaply(load_ct, path, match="cannot hold")


def test_field_of_view_no_scanner_makes_is_refused(tmp_path):
    """The probe's CT: 122x101x30 voxels of 15 mm, a 1.8 m x 1.5 m field of view."""
    path = tmp_path / "coarse.nii.gz"
    nib.save(nib.Nifti1Image(_ct((122, 101, 30)), np.diag([15.0, 15.0, 15.0, 1.0])), str(path))
    message = _refused_cheaply(load_ct, path, match="no CT covers")
    assert "1830 x 1515 x 450 mm" in message and str(path) in message


@pytest.mark.parametrize("shape, zooms", [((512, 512, 300), (0.8, 0.8, 1.5)),      # abdomen
                                          ((512, 512, 1900), (0.97, 0.97, 1.0)),   # whole body, head to toe
                                          ((24, 20, 12), (0.8, 0.8, 2.5))])
def test_real_scanner_geometries_pass_the_header_checks(tmp_path, shape, zooms):
    affine = np.diag([*zooms, 1.0])
    assert all(f <= m for f, m in zip(np.asarray(shape) * zooms, MAX_FIELD_OF_VIEW_MM))
    img = open_header(sparse_nii(tmp_path / "ct.nii", shape, np.int16, affine), "CT")
    assert img.shape == shape


def test_field_of_view_is_measured_in_the_world_not_the_storage_order(tmp_path):
    """An axial CT stored with the slice axis first: 300 slices of 1.5 mm lie along S, 512 x 0.8 mm across."""
    affine = np.array([[0, 0.8, 0, 0], [0, 0, 0.8, 0], [1.5, 0, 0, 0], [0, 0, 0, 1.0]])
    open_header(sparse_nii(tmp_path / "ct.nii", (300, 512, 512), np.int16, affine), "CT")
    long = np.array([[0, 0, 2.0, 0], [0, 0.8, 0, 0], [1.5, 0, 0, 0], [0, 0, 0, 1.0]])  # 1024 mm along R
    with pytest.raises(InputError, match="no CT covers"):
        open_header(sparse_nii(tmp_path / "bad.nii", (300, 512, 512), np.int16, long), "CT")


def test_preprocess_refuses_a_segmentation_bomb_before_reading_it(tmp_path):
    from ld_augment.pipeline import preprocess_case

    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(_ct(), AFFINE), str(ct))
    bomb = gzip_bomb(tmp_path / "seg.nii.gz")
    _refused_cheaply(preprocess_case, str(ct), tmp_path / "case", organ="liver", lesion_type="cyst", seg=str(bomb),
                     match="cannot hold|different shapes", max_mb=50)
    assert not (tmp_path / "case").exists()


def test_affine_mismatch_is_one_line_naming_both_grids():
    a = nib.Nifti1Image(np.zeros((5, 6, 7), np.int16), AFFINE)
    moved = AFFINE.copy()
    moved[2, 3] += 4.0
    with pytest.raises(InputError) as err:
        check_same_grid(a, nib.Nifti1Image(np.zeros((5, 6, 7), np.uint8), moved), name_a="ct.nii.gz",
                        name_b="seg.nii.gz")
    message = str(err.value)
    assert "\n" not in message
    assert "origin (0.0, 0.0, 0.0) mm" in message and "origin (0.0, 0.0, 4.0) mm" in message


def test_unreadable_file_always_gives_a_reason(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(InputError) as err:
        load_ct(path)
    reason = str(err.value).split("readable NIfTI image:")[-1].strip()
    assert reason
