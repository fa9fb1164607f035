"""The two-step synthesis interface: a mask engine draws the lesion, a texture engine paints it into the CT.

Splitting the steps lets callers mix engines (a diffusion mask with a procedural texture, or the reverse).
Everything an engine sees lives in the standardized grid written by ``ld-augment preprocess``; mapping results
back into the user's grid is the pipeline's job, so engines never handle affines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ld_augment.errors import InputError
from ld_augment.placement.bboxes import BBox
from ld_augment.reports import LesionReport


@dataclass
class LesionContext:
    """One organ of one case in the standardized grid (all arrays share ``ct.shape``)."""

    ct: np.ndarray  # float32 HU
    organ_seg: np.ndarray  # int TotalSegmentator ids (label_version) or binary
    organ_mask: np.ndarray  # bool, the target organ
    organ_name: str  # canonical organ name, e.g. "liver"
    spacing: tuple[float, float, float]
    occupied: np.ndarray  # bool, voxels taken by earlier lesions / existing lesions
    #: Voxels the written label is wider than the mask along each axis (across the lesion): ``write_back``'s
    #: reader contour grows a lung nodule's label about a voxel in-plane. The box is the label's extent (a
    #: reader's), so an engine that fills its box draws the lesion's body that much narrower.
    contour_vox: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        shape = self.ct.shape
        for name in ("organ_seg", "organ_mask", "occupied"):
            value = getattr(self, name)
            if value.shape != shape:
                raise InputError(f"LesionContext.{name} has shape {value.shape}, the CT has {shape}")
        if self.organ_mask.dtype != bool:
            self.organ_mask = self.organ_mask.astype(bool)
        if self.occupied.dtype != bool:
            self.occupied = self.occupied.astype(bool)
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]


def check_one_each(kind: str, items: Sequence, reports: Sequence, rngs: Sequence) -> None:
    """Batched engine calls take one report and one rng per lesion (box or mask)."""
    if not len(items) == len(reports) == len(rngs):
        raise ValueError(f"{len(items)} {kind}, {len(reports)} reports and {len(rngs)} rngs; need one each")


#: ``on_rendered(n, ct)``: called by ``TextureEngine.render_many`` with the CT right after lesion n.
OnRendered = Callable[[int, np.ndarray], None]


class MaskEngine(ABC):
    """Report + bbox + organ maps -> lesion mask."""

    name: str = "abstract"

    @abstractmethod
    def generate_mask(
        self, ctx: LesionContext, bbox: BBox, report: LesionReport, rng: np.random.Generator
    ) -> np.ndarray:
        """Return a bool mask of ``ctx.ct.shape`` that obeys the report's cavity rule and avoids ``ctx.occupied``."""

    def generate_masks(self, ctx: LesionContext, bboxes: Sequence[BBox], reports: Sequence[LesionReport],
                       rngs: Sequence[np.random.Generator]) -> list[np.ndarray]:
        """Several lesions of one case, one rng each: ``generate_mask`` lesion after lesion, ``ctx.occupied``
        grown by each earlier result. Engines with a network override this to share its calls (same result)."""
        check_one_each("boxes", bboxes, reports, rngs)
        occupied, masks = np.array(ctx.occupied, dtype=bool, copy=True), []
        for bbox, report, rng in zip(bboxes, reports, rngs):
            mask = np.asarray(self.generate_mask(replace(ctx, occupied=occupied.copy()), bbox, report, rng), bool)
            occupied |= mask
            masks.append(mask)
        return masks

    def provenance(self) -> dict:
        """Engine name, options and checkpoint hashes, stored with every synthesized lesion."""
        return {"engine": self.name}


class TextureEngine(ABC):
    """CT + mask + report -> CT with the lesion."""

    name: str = "abstract"
    #: True where the output is the lesion itself, edges as sharp as drawn, not an image of it (no scanner
    #: blur): writing it into a scan adds the scan's point-spread function (``pipeline.write_back``)
    ideal_edges: bool = False

    @abstractmethod
    def render(
        self, ctx: LesionContext, lesion_mask: np.ndarray, report: LesionReport, rng: np.random.Generator
    ) -> np.ndarray:
        """Return float32 HU of ``ctx.ct.shape``, equal to ``ctx.ct`` away from the lesion and inside the valid range."""

    def render_many(self, ctx: LesionContext, lesion_masks: Sequence[np.ndarray], reports: Sequence[LesionReport],
                    rngs: Sequence[np.random.Generator], on_rendered: OnRendered | None = None) -> np.ndarray:
        """The CT with every lesion rendered: ``render`` lesion after lesion, each on the previous result with
        ``ctx.occupied`` grown by the earlier masks. ``on_rendered(n, ct)`` sees the CT right after lesion n
        (read it, do not modify it). Engines with a network override this to share its calls (same result)."""
        check_one_each("masks", lesion_masks, reports, rngs)
        ct, occupied = ctx.ct, np.array(ctx.occupied, dtype=bool, copy=True)
        for n, (mask, report, rng) in enumerate(zip(lesion_masks, reports, rngs)):
            mask = np.asarray(mask, dtype=bool)
            ct = np.asarray(self.render(replace(ctx, ct=ct, occupied=occupied.copy()), mask, report, rng), np.float32)
            occupied |= mask
            if on_rendered is not None:
                on_rendered(n, ct)
        return np.array(ct, dtype=np.float32, copy=True) if ct is ctx.ct else ct

    def provenance(self) -> dict:
        """Engine name, options and checkpoint hashes, stored with every synthesized lesion."""
        return {"engine": self.name}
