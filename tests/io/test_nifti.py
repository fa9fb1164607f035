"""Loading and validation of user NIfTI files: every bad input gets a clear InputError naming the file."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ld_augment.errors import InputError
from ld_augment.io.nifti import check_same_grid, load_ct, load_label_map, sha256_file

LPS_AFFINE = np.array([[-0.8, 0, 0, 120.0], [0, -0.8, 0, 90.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])


def ct_array(shape=(12, 14, 10), seed=0) -> np.ndarray:
    """Air around a soft-tissue block with a bone voxel: a plausible tiny CT in HU."""
    rng = np.random.default_rng(seed)
    data = np.full(shape, -1000, dtype=np.int16)
    data[2:-2, 2:-2, 2:-2] = (40 + rng.normal(0, 10, (shape[0] - 4, shape[1] - 4, shape[2] - 4))).astype(np.int16)
    data[shape[0] // 2, shape[1] // 2, shape[2] // 2] = 900
    return data


def write(path: Path, data: np.ndarray, affine: np.ndarray = LPS_AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_valid_ct_loads_as_own_copy_and_file_is_untouched(tmp_path: Path) -> None:
    path = write(tmp_path / "ct.nii.gz", ct_array())
    before = sha256_file(path)
    img = load_ct(path)
    assert img.shape == (12, 14, 10)
    assert np.array_equal(np.asanyarray(img.dataobj), ct_array())
    np.testing.assert_allclose(img.affine, LPS_AFFINE)
    np.asarray(img.dataobj)[0, 0, 0] = 5  # mutating the result must not reach the file
    assert sha256_file(path) == before


def test_accepts_nibabel_image_without_modifying_it() -> None:
    src = nib.Nifti1Image(ct_array(), LPS_AFFINE)
    img = load_ct(src)
    assert img is not src and np.array_equal(np.asanyarray(img.dataobj), np.asanyarray(src.dataobj))


def test_singleton_fourth_dimension_is_squeezed(tmp_path: Path) -> None:
    path = write(tmp_path / "ct4.nii.gz", ct_array()[..., None])
    assert load_ct(path).shape == (12, 14, 10)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 3_000_001)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_001).hexdigest()


def _patch_pixdim(path: Path, axis: int, value: float) -> Path:
    """Write `value` into pixdim[axis] of a saved .nii: nibabel repairs such headers itself, so patch the bytes."""
    nib.save(nib.Nifti1Image(ct_array(), LPS_AFFINE), str(path))
    raw = bytearray(path.read_bytes())
    raw[76 + 4 * axis: 80 + 4 * axis] = struct.pack("<f", value)  # NIfTI-1 pixdim: float32[8] at byte 76
    path.write_bytes(bytes(raw))
    return path


def _zero_spacing(tmp_path: Path, value: float) -> Path:
    return _patch_pixdim(tmp_path / f"pixdim_{value}.nii", 2, value)


def _degenerate_sform(tmp_path: Path) -> Path:
    flat = LPS_AFFINE.copy()
    flat[:3, 2] = 0.0  # the third voxel axis has no extent in the affine nibabel will use
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((12, 14, 10))
    header.set_sform(flat, code=2)  # nibabel rewrites the sform from an image affine on save, so pass none
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(ct_array(), None, header), str(path))
    return path


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the message must contain)."""
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not an image\n")
    wrong_suffix = tmp_path / "ct.nrrd"
    wrong_suffix.write_bytes(b"NRRD0004\n")
    nan = ct_array().astype(np.float32)
    nan[3, 3, 3] = np.nan
    inf = ct_array().astype(np.float32)
    inf[4, 4, 4] = np.inf
    mr_like = np.random.default_rng(1).uniform(0, 1, (12, 14, 10)).astype(np.float32)
    no_air = ct_array() + 1000  # min 0 > -500
    no_tissue = np.clip(ct_array(), None, 50)  # max 50 < 100
    return {
        "missing": (tmp_path / "absent.nii.gz", "does not exist"),
        "text file named .nii.gz": (text, "not a readable NIfTI"),
        "wrong suffix": (wrong_suffix, "not a NIfTI"),
        "2D": (write(tmp_path / "slice.nii.gz", ct_array()[:, :, 0]), "2D"),
        "single-slice 3D": (write(tmp_path / "slice3.nii.gz", ct_array()[:, :, :1]), "2D"),
        "4D": (write(tmp_path / "series.nii.gz", np.stack([ct_array(), ct_array()], axis=-1)), "2 volumes"),
        "NaN": (write(tmp_path / "nan.nii.gz", nan), "NaN/inf"),
        "inf": (write(tmp_path / "inf.nii.gz", inf), "NaN/inf"),
        "not HU (0..1)": (write(tmp_path / "mr.nii.gz", mr_like), "not look like a CT"),
        "min > -500": (write(tmp_path / "noair.nii.gz", no_air), "not look like a CT"),
        "max < 100": (write(tmp_path / "notissue.nii.gz", no_tissue), "not look like a CT"),
        "zero spacing": (_zero_spacing(tmp_path, 0.0), "invalid voxel spacing"),
        "negative spacing": (_zero_spacing(tmp_path, -1.0), "invalid voxel spacing"),
        "NaN spacing": (_zero_spacing(tmp_path, float("nan")), "invalid voxel spacing"),
        "degenerate affine": (_degenerate_sform(tmp_path), "degenerate affine"),
    }


BAD_CASES = ["missing", "text file named .nii.gz", "wrong suffix", "2D", "single-slice 3D", "4D", "NaN", "inf",
             "not HU (0..1)", "min > -500", "max < 100", "zero spacing", "negative spacing", "NaN spacing",
             "degenerate affine"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_ct_input_gives_clear_error(tmp_path: Path, case: str) -> None:
    path, words = _bad_inputs(tmp_path)[case]
    with pytest.raises(InputError) as info:
        load_ct(path)
    message = str(info.value)
    assert str(path) in message, message
    assert words in message, message


def test_negative_spacing_in_memory_image_is_rejected() -> None:
    # an in-memory header can carry a negative zoom too (no file to re-read)
    img = nib.Nifti1Image(ct_array(), LPS_AFFINE)
    img.header["pixdim"][3] = -2.5
    with pytest.raises(InputError, match="<in-memory image> has invalid voxel spacing"):
        load_ct(img)


def test_not_a_path_or_image_is_rejected() -> None:
    with pytest.raises(InputError, match="expected a path or a nibabel image"):
        load_ct(np.zeros((4, 4, 4)))  # type: ignore[arg-type]


# ---- label maps -----------------------------------------------------------------------------------------


def test_float_stored_integer_labels_become_uint8(tmp_path: Path) -> None:
    labels = np.zeros((8, 8, 8), np.float32)
    labels[2:4, 2:4, 2:4] = 5
    labels[5:7, 5:7, 5:7] = 104
    path = write(tmp_path / "seg.nii.gz", labels)
    img = load_label_map(path)
    assert img.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(img.dataobj))) == {0, 5, 104}


def test_large_labels_get_a_wider_integer_type(tmp_path: Path) -> None:
    labels = np.zeros((8, 8, 8), np.int32)
    labels[1, 1, 1] = 300
    img = load_label_map(write(tmp_path / "seg.nii.gz", labels))
    assert np.issubdtype(img.get_data_dtype(), np.integer) and int(np.asanyarray(img.dataobj).max()) == 300


@pytest.mark.parametrize(
    "data, words",
    [
        (np.full((6, 6, 6), 0.5, np.float32), "not whole numbers"),
        (np.full((6, 6, 6), -1, np.int16), "negative labels"),
        (np.full((6, 6, 6), np.nan, np.float32), "NaN/inf"),
        (np.zeros((6, 6), np.uint8), "2D"),
    ],
    ids=["fractional", "negative", "nan", "2D"],
)
def test_bad_label_map_gives_clear_error(tmp_path: Path, data: np.ndarray, words: str) -> None:
    path = write(tmp_path / "seg.nii.gz", data)
    with pytest.raises(InputError) as info:
        load_label_map(path, name="organ segmentation")
    assert words in str(info.value) and str(path) in str(info.value)
    assert "organ segmentation" in str(info.value)


# ---- grids ----------------------------------------------------------------------------------------------


def test_check_same_grid_accepts_tolerance_and_rejects_mismatch() -> None:
    a = nib.Nifti1Image(np.zeros((5, 6, 7), np.int16), LPS_AFFINE)
    near = LPS_AFFINE.copy()
    near[0, 3] += 5e-4
    check_same_grid(a, nib.Nifti1Image(np.zeros((5, 6, 7), np.uint8), near), name_a="CT", name_b="seg")
    with pytest.raises(InputError, match="different shapes .*\\(5, 6, 7\\) and \\(5, 6, 8\\)"):
        check_same_grid(a, nib.Nifti1Image(np.zeros((5, 6, 8), np.uint8), LPS_AFFINE), name_a="CT", name_b="seg")
    moved = LPS_AFFINE.copy()
    moved[2, 3] += 1.5
    with pytest.raises(InputError, match="CT.* and seg.* different affines \\(max difference 1.5"):
        check_same_grid(a, nib.Nifti1Image(np.zeros((5, 6, 7), np.uint8), moved), name_a="CT", name_b="seg")


def test_real_ct_and_segmentation_load_on_one_grid(real_ct: Path, real_seg: Path) -> None:
    ct_hash, seg_hash = sha256_file(real_ct), sha256_file(real_seg)
    ct = load_ct(real_ct)
    seg = load_label_map(real_seg)
    check_same_grid(ct, seg, name_a="CT", name_b="segmentation")
    assert ct.shape == (122, 101, 30) and seg.get_data_dtype() == np.uint8
    assert int((np.asanyarray(seg.dataobj) == 5).sum()) == 38_634
    assert (sha256_file(real_ct), sha256_file(real_seg)) == (ct_hash, seg_hash)
