"""Lesion placement: the BBox type, the four cavity rules, overlap, determinism, errors and shrinking."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ld_augment.errors import ConfigError, InputError
from ld_augment.organs.registry import CAVITY_LUMEN, CAVITY_PARENCHYMA, CAVITY_PROTRUDING, CAVITY_WALL
from ld_augment.placement.bboxes import BBox, bbox_map, cavity_rule, place_lesions, wall_and_lumen

LIVER, GALLBLADDER, STOMACH = 5, 4, 6


def _box_voxels(mask: np.ndarray, box: BBox) -> np.ndarray:
    return mask[box.slices(mask.shape)]


def _ellipsoid(shape, box: BBox) -> np.ndarray:
    """The box's inscribed ellipsoid (what the procedural engine may fill) as a bool volume."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = np.asarray(box.start(), float) + (np.asarray(box.size) - 1) / 2.0
    return sum(((g - c) / (s / 2.0)) ** 2 for g, c, s in zip(grid, centre, box.size)) <= 1.0


def test_bbox_geometry_and_clipping() -> None:
    box = BBox((10, 10, 10), (5, 4, 1))
    assert box.start() == (8, 8, 10) and box.stop() == (13, 12, 11)
    edge = BBox((1, 2, 58), (6, 6, 6))
    assert edge.start() == (-2, -1, 55)
    assert edge.start((60, 60, 60)) == (0, 0, 55) and edge.stop((60, 60, 60)) == (4, 5, 60)
    assert _box_voxels(np.ones((60, 60, 60)), edge).shape == (4, 5, 5)
    assert BBox.from_dict(box.to_dict()) == box
    assert BBox((0, 0, 0), (4, 4, 4)).overlaps(BBox((1, 1, 1), (2, 2, 2)))
    assert not BBox((0, 0, 0), (4, 4, 4)).overlaps(BBox((4, 0, 0), (4, 4, 4)))


def test_bbox_rejects_bad_values() -> None:
    with pytest.raises(ConfigError):
        BBox((1, 2, 3), (0, 4, 4))
    with pytest.raises(ConfigError):
        BBox.from_dict({"center": [1, 2, 3], "size": [2, 2, 2], "extra": 1})


def test_bbox_map_labels_each_box() -> None:
    boxes = [BBox((5, 5, 5), (3, 3, 3)), BBox((15, 15, 15), (4, 2, 2))]
    labels = bbox_map((20, 20, 20), boxes)
    assert labels.dtype == np.uint8
    assert (labels == 1).sum() == 27 and (labels == 2).sum() == 16
    assert labels[boxes[1].slices(labels.shape)].min() == 2 and labels[0, 0, 0] == 0


def test_cavity_rule_keywords_and_default() -> None:
    assert cavity_rule(CAVITY_LUMEN) == "lumen" and cavity_rule(CAVITY_WALL + ",") == "wall"
    assert cavity_rule(CAVITY_PARENCHYMA) == "within" and cavity_rule(CAVITY_PROTRUDING) == "protruding"
    assert cavity_rule(None, "liver") == "within"
    with pytest.raises(ConfigError, match="valid values"):
        cavity_rule("somewhere", "liver")


def test_within_parenchyma_ellipsoid_inside_or_subcapsular(solid_organ: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        (box,) = place_lesions(solid_organ, [(12, 10, 8)], cavity=CAVITY_PARENCHYMA, rng=rng, capsule_fraction=0.0)
        assert not (_ellipsoid(solid_organ.shape, box) & ~solid_organ).any()
    # the inscribed ellipsoid, not the whole box: a box as large as the organ allows reaches outside at its corners
    (big,) = place_lesions(solid_organ, [(40, 36, 30)], cavity=CAVITY_PARENCHYMA, rng=rng, capsule_fraction=0.0)
    assert not (_ellipsoid(solid_organ.shape, big) & ~solid_organ).any() and not _box_voxels(solid_organ, big).all()
    touching = 0
    for _ in range(8):  # subcapsular: the ellipsoid reaches the capsule, mostly inside the organ
        (box,) = place_lesions(solid_organ, [(12, 12, 12)], cavity=CAVITY_PARENCHYMA, rng=rng, capsule_fraction=1.0)
        ell = _ellipsoid(solid_organ.shape, box)
        assert (ell & solid_organ).sum() >= 0.8 * ell.sum()
        touching += int((ndimage.binary_dilation(ell) & ~solid_organ).any())
    assert touching == 8


def test_protruding_centre_inside_lesion_partly_outside(solid_organ: np.ndarray) -> None:
    boxes = place_lesions(solid_organ, [(20, 20, 20)] * 3, cavity=CAVITY_PROTRUDING, rng=np.random.default_rng(1))
    for b in boxes:
        ell = _ellipsoid(solid_organ.shape, b)
        assert solid_organ[b.center] and 0.1 < (ell & ~solid_organ).sum() / ell.sum() < 0.75
    # a box this big cannot fit inside this organ: the looser rule is really in use
    place_lesions(solid_organ, [(70, 70, 70)], cavity=CAVITY_PROTRUDING, rng=np.random.default_rng(1))
    with pytest.raises(ConfigError):
        place_lesions(solid_organ, [(70, 70, 70)], cavity=CAVITY_PARENCHYMA, rng=np.random.default_rng(1),
                      organ_name="organ")


def test_hollow_rules_lumen_and_wall(hollow_organ: np.ndarray) -> None:
    wall, lumen = wall_and_lumen(hollow_organ, (1.0, 1.0, 1.0), 3.0)
    rng = np.random.default_rng(2)
    for box in place_lesions(hollow_organ, [(8, 8, 8)] * 4, cavity=CAVITY_LUMEN, rng=rng):
        assert not (_ellipsoid(lumen.shape, box) & ~lumen).any()
    for box in place_lesions(hollow_organ, [(8, 8, 8)] * 4, cavity=CAVITY_WALL, rng=rng):
        assert wall[box.center] and not lumen[box.center]


def test_several_boxes_disjoint_and_avoid_occupied(solid_organ: np.ndarray) -> None:
    occupied = np.zeros_like(solid_organ)
    occupied[30:50, 25:45, 20:40] = True
    boxes = place_lesions(solid_organ, [(8, 8, 8)] * 6, cavity=CAVITY_PARENCHYMA, rng=np.random.default_rng(3),
                          occupied=occupied)
    assert len(boxes) == 6
    for i, a in enumerate(boxes):
        assert not _box_voxels(occupied, a).any()
        assert all(not a.overlaps(b) for b in boxes[i + 1:])
    labels = bbox_map(solid_organ.shape, boxes)
    assert [(labels == k).sum() for k in range(1, 7)] == [512] * 6


def test_deterministic_given_rng(solid_organ: np.ndarray) -> None:
    def run(seed: int) -> list[BBox]:
        return place_lesions(solid_organ, [(6, 6, 6), (9, 7, 5)], cavity=CAVITY_PROTRUDING,
                             rng=np.random.default_rng(seed))

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_too_small_and_absent_organ_errors(make_ellipsoid) -> None:
    small = make_ellipsoid((40, 40, 40), (20, 20, 20), (5, 5, 5))
    with pytest.raises(ConfigError, match=r"kidney_left.*\(15, 15, 15\)"):
        place_lesions(small, [(15, 15, 15)], cavity=CAVITY_PARENCHYMA, rng=np.random.default_rng(0),
                      organ_name="kidney_left")
    with pytest.raises(InputError, match="spleen"):
        place_lesions(np.zeros((10, 10, 10), bool), [(2, 2, 2)], cavity=CAVITY_PARENCHYMA,
                      rng=np.random.default_rng(0), organ_name="spleen")


def test_shrink_reduces_size_until_it_fits(make_ellipsoid) -> None:
    small = make_ellipsoid((40, 40, 40), (20, 20, 20), (5, 5, 5))
    (box,) = place_lesions(small, [(15, 15, 15)], cavity=CAVITY_PARENCHYMA, rng=np.random.default_rng(0),
                           shrink=True)
    ell = _ellipsoid(small.shape, box)  # the largest that fits: against the capsule, mostly inside
    assert max(box.size) < 15 and (ell & small).sum() >= 0.8 * ell.sum()


@pytest.mark.needs_shared
def test_real_liver_box_inside_liver(real_seg_1mm: np.ndarray) -> None:
    liver = real_seg_1mm == LIVER
    boxes = place_lesions(liver, [(28, 29, 26), (15, 15, 15)], cavity=CAVITY_PARENCHYMA,
                          rng=np.random.default_rng(0), organ_name="liver", capsule_fraction=0.0)
    for box in boxes:
        assert not (_ellipsoid(liver.shape, box) & ~liver).any()
    assert not boxes[0].overlaps(boxes[1])


@pytest.mark.needs_shared
def test_real_stomach_lumen_and_wall(real_seg_1mm: np.ndarray) -> None:
    stomach = real_seg_1mm == STOMACH
    depth = ndimage.distance_transform_edt(stomach)
    (inside,) = place_lesions(stomach, [(10, 10, 10)], cavity=CAVITY_LUMEN, rng=np.random.default_rng(0),
                              organ_name="stomach")
    assert (depth[_ellipsoid(depth.shape, inside)] > 3.0).all()
    walls = place_lesions(stomach, [(12, 12, 12)] * 3, cavity=CAVITY_WALL, rng=np.random.default_rng(0),
                          organ_name="stomach")
    assert all(0 < depth[b.center] <= 3.0 for b in walls)
