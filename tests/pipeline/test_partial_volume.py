"""Write-back renders partial volume in the source grid: voxels around a label carry part of its contrast."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ld_augment.pipeline.write_back import write_back


def test_voxels_touching_the_label_carry_part_of_the_contrast() -> None:
    source = nib.Nifti1Image(np.full((30, 30, 30), 50, np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))
    std_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    grid = np.indices((90, 90, 90))
    lesion = sum((grid[a] - 45.3) ** 2 for a in range(3)) <= 10.0**2  # a 20 mm ball on the 1 mm grid
    delta = np.where(lesion, -40.0, 0.0).astype(np.float32)  # a sharp -40 HU lesion
    written = write_back(source, std_affine, delta, lesion)
    change = written.ct_raw.astype(np.float32) - 50.0
    label = written.lesion
    touching = ndimage.binary_dilation(label) & ~label
    share = change[touching].mean() / -40.0
    assert 0.05 <= share <= 0.45, share  # real interfaces in the shared scan: ~0.16; point sampling gave 0.00
    core = ndimage.binary_erosion(label)
    assert np.allclose(change[core], -40.0, atol=1.0)  # under the label the lesion's own value stays
    far = ~ndimage.binary_dilation(label, iterations=3)
    assert not change[far].any()


def test_partial_label_share_labels_the_partial_volume_rim() -> None:
    """A lung nodule's label takes the source voxels mostly covered by it too (a reader's contour against air),
    and only those: no voxel without lesion, every centre-inside voxel kept."""
    source = nib.Nifti1Image(np.full((30, 30, 30), -800, np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))
    std_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    grid = np.indices((90, 90, 90))
    lesion = sum((grid[a] - 45.3) ** 2 for a in range(3)) <= 5.0**2  # a 10 mm nodule on the 1 mm grid
    delta = np.where(lesion, 800.0, 0.0).astype(np.float32)
    tight = write_back(source, std_affine, delta, lesion).lesion
    generous = write_back(source, std_affine, delta, lesion, partial_label_share=0.3).lesion
    assert (generous & tight).sum() == tight.sum() and generous.sum() > tight.sum()
    change = write_back(source, std_affine, delta, lesion, partial_label_share=0.3).ct_raw.astype(np.float32) + 800
    rim = generous & ~tight
    assert (change[rim] > 0.1 * 800).all() and (change[rim] < 0.6 * 800).all()  # partial volume, not empty air
    assert not (generous & ~ndimage.binary_dilation(tight)).any()


def test_source_view_contrast_is_what_write_back_writes() -> None:
    """A 4 mm nodule on a 3 mm grid keeps more of its +600 HU centred on a source voxel than off it (split
    among neighbours); the estimate, read from the source box alone, is what write_back writes (measured on its
    output as ld_augment.evaluation measures lesions), and None where nothing would be labelled."""
    from ld_augment.evaluation.lesion_features import measure_lesion
    from ld_augment.pipeline.write_back import core_contrast, source_view

    def source_core_contrast(*args, **options):
        view = source_view(*args, **options)
        return None if view is None else core_contrast(view.before, view.after, view.lesion, view.organ,
                                                       view.spacing)

    source = nib.Nifti1Image(np.full((30, 30, 30), -800, np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))
    std_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    organ = np.ones((30, 30, 30), bool)
    grid = np.indices((90, 90, 90))
    options = {"partial_label_share": 0.3, "average_under_label": True}
    kept = {}
    for centre in ((45.0, 45.0, 45.0), (46.0, 46.0, 46.0), (46.5, 45.0, 45.0), (46.5, 46.5, 45.0)):
        lesion = sum((grid[a] - centre[a]) ** 2 for a in range(3)) <= 2.0**2  # source voxel 15's centre: 45 mm
        delta = np.where(lesion, 600.0, 0.0).astype(np.float32)
        estimate = source_core_contrast(source, std_affine, delta, lesion, organ, **options)
        written = write_back(source, std_affine, delta, lesion, **options)
        if not written.lesion.any():
            assert estimate is None
            continue
        measured = measure_lesion(written.ct_raw.astype(np.float32), written.lesion, organ, (3.0, 3.0, 3.0))
        assert estimate == pytest.approx(measured["contrast_hu"], abs=0.05 * abs(estimate) + 5.0)
        kept[centre] = estimate / 600.0
    centred = kept.pop((45.0, 45.0, 45.0))
    assert len(kept) == 2 and centred > 0.5 and all(centred > 1.5 * share for share in kept.values()), kept


@pytest.mark.parametrize("under_label", [False, True])
def test_ideal_edges_get_the_scans_blur_where_the_grid_adds_none(under_label) -> None:
    """A sharp lesion written into a 1 mm scan (the standardized grid: no partial volume to add) is a step
    without the scan's own point-spread function; with it the voxels touching the label carry part of the
    contrast (LIDC nodules on thin slices: 0.08-0.14 within 1 mm), its label keeps the lesion's value, and
    into a 3 mm scan, whose partial volume is wider, the floor changes nothing."""
    from ld_augment.pipeline.write_back import SCAN_PSF_FWHM_MM

    grid = np.indices((60, 60, 60))
    lesion = sum((grid[a] - 30.3) ** 2 for a in range(3)) <= 6.0**2  # a 12 mm nodule, 1 mm grid
    delta = np.where(lesion, 800.0, 0.0).astype(np.float32)
    thin = nib.Nifti1Image(np.full((60, 60, 60), -800, np.int16), np.eye(4))
    options = {"average_under_label": under_label}
    step = write_back(thin, np.eye(4), delta, lesion, **options).ct_raw.astype(np.float32) + 800.0
    imaged = write_back(thin, np.eye(4), delta, lesion, psf_floor_mm=SCAN_PSF_FWHM_MM,
                        **options).ct_raw.astype(np.float32) + 800.0
    touching = ndimage.binary_dilation(lesion) & ~lesion
    assert float(np.median(step[touching])) == 0.0
    assert 0.05 <= float(np.median(imaged[touching])) / 800.0 <= 0.3
    assert np.array_equal(imaged[lesion], step[lesion])  # the label keeps the lesion's own value
    assert not imaged[~ndimage.binary_dilation(lesion, iterations=3)].any()

    coarse = nib.Nifti1Image(np.full((20, 20, 20), -800, np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))
    plain = write_back(coarse, np.eye(4), delta, lesion, **options)
    floored = write_back(coarse, np.eye(4), delta, lesion, psf_floor_mm=SCAN_PSF_FWHM_MM, **options)
    assert np.array_equal(plain.ct_raw, floored.ct_raw) and np.array_equal(plain.lesion, floored.lesion)
