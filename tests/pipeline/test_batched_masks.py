"""The pipeline's mask phase (`_draw_masks`): first draws shared in one call, redraws and left-out lesions exact.

A fake engine whose masks depend on the rng stream, the box and what is occupied lets the test compare the
batched phase with the plain lesion-after-lesion loop it replaces, including the rare redraw path.
"""

from __future__ import annotations

import numpy as np

from ld_augment.engines.base import LesionContext, MaskEngine
from ld_augment.pipeline.synthesize import REDRAWS, _draw_masks, _larger
from ld_augment.placement.bboxes import BBox
from ld_augment.reports import LesionReport

SHAPE = (24, 24, 24)


class Cubes(MaskEngine):
    """A cube in the box, shrunk by a random 0..2 voxels, minus what is occupied; records its calls."""

    name = "cubes"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def generate_masks(self, ctx, bboxes, reports, rngs):
        self.batches.append(len(bboxes))
        return super().generate_masks(ctx, bboxes, reports, rngs)

    def generate_mask(self, ctx, bbox, report, rng):
        shrink = int(rng.integers(0, 3))
        mask = np.zeros(SHAPE, bool)
        lo, hi = bbox.start(SHAPE), bbox.stop(SHAPE)
        mask[tuple(slice(a + shrink, max(a + shrink, b - shrink)) for a, b in zip(lo, hi))] = True
        return mask & ~ctx.occupied


def _sequential(masker, ctx, boxes, report, rng_for, source_voxels, minimum):
    """The loop the batched phase replaces: lesion after lesion, redraw in place, accepted ones occupy."""
    occupied, out = ctx.occupied.copy(), []
    for i, box in enumerate(boxes):
        rng, drawn = rng_for(i), box
        for attempt in range(REDRAWS + 1):
            c = LesionContext(ct=ctx.ct, organ_seg=ctx.organ_seg, organ_mask=ctx.organ_mask, organ_name="liver",
                              spacing=ctx.spacing, occupied=occupied.copy())
            mask = masker.generate_mask(c, drawn, report.with_values(size=drawn.size), rng)
            if source_voxels(mask) >= minimum:
                break
            drawn = _larger(drawn, box)
        accepted = source_voxels(mask) >= minimum
        if accepted:
            occupied |= mask
        out.append((mask, accepted, attempt + 1, drawn))
    return out


def test_batched_mask_phase_equals_lesion_after_lesion_with_redraws() -> None:
    ctx = LesionContext(ct=np.zeros(SHAPE, np.float32), organ_seg=np.ones(SHAPE, np.int16) * 5,
                        organ_mask=np.ones(SHAPE, bool), organ_name="liver", spacing=(1.0, 1.0, 1.0),
                        occupied=np.zeros(SHAPE, bool))
    # overlapping boxes (occupancy matters); the second is small: it needs redraws in a larger box
    boxes = [BBox((8, 8, 8), (8, 8, 8)), BBox((12, 12, 12), (3, 3, 3)), BBox((14, 10, 10), (8, 8, 8)),
             BBox((18, 18, 18), (6, 6, 6))]
    report = LesionReport(organ_id=5)
    seq = np.random.SeedSequence(7).spawn(len(boxes))
    minimum = 20
    count = lambda m: int(m.sum())  # noqa: E731  (the source grid is the standardized grid here)
    masker = Cubes()
    got = _draw_masks(masker, ctx, boxes, list(range(len(boxes))), report, lambda i: np.random.default_rng(seq[i]),
                      count, minimum, drops_failed=False)
    want = _sequential(Cubes(), ctx, boxes, report, lambda i: np.random.default_rng(seq[i]), count, minimum)
    assert [d.index for d in got] == [1, 2, 3, 4]
    assert got[1].attempts > 1  # the redraw path ran ...
    assert masker.batches[0] == 4 and len(masker.batches) == 2  # ... and the lesions after it were drawn again
    for d, (mask, accepted, attempts, drawn) in zip(got, want):
        assert np.array_equal(d.mask, mask) and d.accepted == accepted and d.attempts == attempts
        assert d.drawn == drawn and d.report.size == report.with_values(size=drawn.size).size


def test_a_left_out_lesion_frees_its_voxels_for_the_next() -> None:
    """A lesion too small even after every redraw is left out; the next lesion may then use its voxels."""
    ctx = LesionContext(ct=np.zeros(SHAPE, np.float32), organ_seg=np.ones(SHAPE, np.int16) * 5,
                        organ_mask=np.ones(SHAPE, bool), organ_name="liver", spacing=(1.0, 1.0, 1.0),
                        occupied=np.zeros(SHAPE, bool))
    boxes = [BBox((10, 10, 10), (6, 6, 6)), BBox((11, 11, 11), (6, 6, 6))]
    report = LesionReport(organ_id=5)
    seq = np.random.SeedSequence(1).spawn(2)
    count = lambda m: int(m.sum())  # noqa: E731
    got = _draw_masks(Cubes(), ctx, boxes, [0, 1], report, lambda i: np.random.default_rng(seq[i]), count, 10**6,
                      drops_failed=False)
    want = _sequential(Cubes(), ctx, boxes, report, lambda i: np.random.default_rng(seq[i]), count, 10**6)
    assert not any(d.accepted for d in got)
    for d, (mask, accepted, attempts, _) in zip(got, want):
        assert np.array_equal(d.mask, mask) and d.attempts == attempts == REDRAWS + 1
