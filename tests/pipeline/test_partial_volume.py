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


def test_ideal_edges_get_the_scans_blur_where_the_grid_adds_none() -> None:
    """A sharp lesion written into a 1 mm scan (the standardized grid: no partial volume to add) is a step
    without the scan's own point-spread function; with it the voxels touching the label carry part of the
    contrast (LIDC nodules on thin slices: 0.08-0.14 within 1 mm), its label keeps the lesion's value, and
    into a 3 mm scan, whose partial volume is wider, the floor changes nothing."""
    from ld_augment.pipeline.write_back import SCAN_PSF_FWHM_MM

    grid = np.indices((60, 60, 60))
    lesion = sum((grid[a] - 30.3) ** 2 for a in range(3)) <= 6.0**2  # a 12 mm nodule, 1 mm grid
    delta = np.where(lesion, 800.0, 0.0).astype(np.float32)
    thin = nib.Nifti1Image(np.full((60, 60, 60), -800, np.int16), np.eye(4))
    step = write_back(thin, np.eye(4), delta, lesion).ct_raw.astype(np.float32) + 800.0
    imaged = write_back(thin, np.eye(4), delta, lesion, psf_floor_mm=SCAN_PSF_FWHM_MM).ct_raw.astype(np.float32) + 800.0
    touching = ndimage.binary_dilation(lesion) & ~lesion
    assert float(np.median(step[touching])) == 0.0
    assert 0.05 <= float(np.median(imaged[touching])) / 800.0 <= 0.3
    assert np.array_equal(imaged[lesion], step[lesion])  # the label keeps the lesion's own value
    assert not imaged[~ndimage.binary_dilation(lesion, iterations=3)].any()

    coarse = nib.Nifti1Image(np.full((20, 20, 20), -800, np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))
    for options in ({}, {"average_under_label": True, "partial_label_share": 0.3}):
        plain = write_back(coarse, np.eye(4), delta, lesion, **options)
        floored = write_back(coarse, np.eye(4), delta, lesion, psf_floor_mm=SCAN_PSF_FWHM_MM, **options)
        assert np.array_equal(plain.ct_raw, floored.ct_raw) and np.array_equal(plain.lesion, floored.lesion)


def test_a_thin_slice_lung_nodule_has_a_ramp_across_its_surface_and_a_readers_label() -> None:
    """With the lung's options on a 1 mm scan the edge's ramp straddles the surface and the label reaches the
    ramp's foot, as LIDC's thin-slice nodules show (label's outer 1 mm: 0.62 of the contrast, 1 mm outside:
    0.10, 32 % of label voxels below half contrast). The scanner's blur beyond the label only wrote a step at
    it (outer 1 mm: the full contrast, no label voxel below half) -- bench_edge_profile measures both."""
    from ld_augment.evaluation.lesion_features import signed_distance_mm
    from ld_augment.pipeline.synthesize import (LUNG_CONTOUR_SHARE, LUNG_CONTOUR_SPREAD, LUNG_EDGE_FWHM_MM,
                                                LUNG_PARTIAL_LABEL_SHARE)
    from ld_augment.pipeline.write_back import SCAN_PSF_FWHM_MM

    grid = np.indices((60, 60, 60))
    ball = sum((grid[a] - 30.3) ** 2 for a in range(3)) <= 4.5**2  # a 9 mm nodule, 1 mm grid
    delta = np.where(ball, 800.0, 0.0).astype(np.float32)
    thin = nib.Nifti1Image(np.full((60, 60, 60), -800, np.int16), np.eye(4))

    def profile(**options) -> tuple[float, float, float, float]:
        written = write_back(thin, np.eye(4), delta, ball, **options)
        share = (written.ct_raw.astype(np.float32) + 800.0) / 800.0
        sd = signed_distance_mm(written.lesion, (1.0, 1.0, 1.0))
        outer = written.lesion & (sd < 1.0)
        outside = ~written.lesion & (sd >= -1.0)
        below = float((share[written.lesion] < 0.5).mean())
        return float(np.median(share[outer])), float(np.median(share[outside])), below, float(written.lesion.sum())

    lung = profile(partial_label_share=LUNG_PARTIAL_LABEL_SHARE, contour_share=LUNG_CONTOUR_SHARE,
                   contour_spread=LUNG_CONTOUR_SPREAD, average_under_label=True, psf_floor_mm=LUNG_EDGE_FWHM_MM)
    outer, outside, below, voxels = lung
    assert 0.4 <= outer <= 0.75 and 0.03 <= outside <= 0.2 and 0.1 <= below <= 0.45, lung
    assert ball.sum() < voxels < 1.6 * ball.sum()  # the foot of the ramp, not a halo
    # traced slice by slice: the contour grows in the axial plane, not through the caps (a 1 mm mask grown in
    # 3-D came out rounder and smoother than LIDC's, bench_thin_slice_shape)
    label = write_back(thin, np.eye(4), delta, ball, partial_label_share=LUNG_PARTIAL_LABEL_SHARE,
                       contour_share=LUNG_CONTOUR_SHARE, contour_spread=LUNG_CONTOUR_SPREAD, average_under_label=True,
                       psf_floor_mm=LUNG_EDGE_FWHM_MM).lesion
    slices = lambda mask: np.flatnonzero(mask.any(axis=(0, 1)))  # noqa: E731 - axis 2 runs along world z here
    assert np.array_equal(slices(label), slices(ball)) and label[:, :, 30].sum() > ball[:, :, 30].sum()
    step = profile(psf_floor_mm=SCAN_PSF_FWHM_MM)  # the scanner's blur beyond the label only
    assert step[0] > 0.95 and step[2] == 0.0 and step[3] == ball.sum(), step
    # on a 3 mm grid, whose own partial volume is wider, the contour adds nothing to the thick-slice rim
    coarse = nib.Nifti1Image(np.full((20, 20, 20), -800, np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))
    rim = {"partial_label_share": LUNG_PARTIAL_LABEL_SHARE, "average_under_label": True,
           "psf_floor_mm": LUNG_EDGE_FWHM_MM}
    assert np.array_equal(write_back(coarse, np.eye(4), delta, ball, **rim).lesion,
                          write_back(coarse, np.eye(4), delta, ball, contour_share=LUNG_CONTOUR_SHARE,
                                     contour_spread=LUNG_CONTOUR_SPREAD, **rim).lesion)


def test_a_readers_contour_is_traced_slice_by_slice_and_the_gate_sees_the_written_label() -> None:
    """With a spread the contour's share is drawn per slice (a reader traces every slice anew): the ring a slice
    gains varies from slice to slice, where one share grew a ring of the same width on every slice of a ball
    and rounded small nodules off (bench_thin_slice_shape). The draw comes from the lesion's own voxels: the
    same lesion gets the same label, and the quality gate's source view labels what write_back writes."""
    from ld_augment.pipeline.write_back import source_view

    grid = np.indices((60, 60, 60))
    ball = sum((grid[a] - 30.3) ** 2 for a in range(3)) <= 5.5**2  # an 11 mm nodule, 1 mm grid
    delta = np.where(ball, 800.0, 0.0).astype(np.float32)
    thin = nib.Nifti1Image(np.full((60, 60, 60), -800, np.int16), np.eye(4))
    lung = {"average_under_label": True, "psf_floor_mm": 1.85, "contour_share": 0.25}

    def ring_per_slice(label: np.ndarray) -> np.ndarray:
        z = np.flatnonzero(ball.any(axis=(0, 1)))
        return np.array([(label[:, :, k] & ~ball[:, :, k]).sum() / max(ball[:, :, k].sum(), 1) for k in z])

    even = write_back(thin, np.eye(4), delta, ball, **lung).lesion
    traced = write_back(thin, np.eye(4), delta, ball, contour_spread=0.25, **lung).lesion
    assert np.array_equal(traced, write_back(thin, np.eye(4), delta, ball, contour_spread=0.25, **lung).lesion)
    in_plane = ndimage.generate_binary_structure(3, 1)
    in_plane[:, :, [0, 2]] = False  # axis 2 runs along world z here
    assert not (traced & ~ndimage.binary_dilation(ball, in_plane)).any()  # a voxel in-plane at most
    middle = slice(3, -3)  # the caps' few voxels grow wholly or not at all under either rule
    assert np.std(ring_per_slice(traced)[middle]) > 2 * np.std(ring_per_slice(even)[middle])
    view = source_view(thin, np.eye(4), delta, ball, np.ones((60, 60, 60), bool), contour_spread=0.25, **lung)
    assert view is not None and view.lesion.sum() == traced.sum()
