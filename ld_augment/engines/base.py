"""The two-step synthesis interface: a mask engine draws the lesion, a texture engine paints it into the CT.

Splitting the steps lets callers mix engines (a diffusion mask with a procedural texture, or the reverse).
Everything an engine sees lives in the standardized grid written by ``ld-augment preprocess``; mapping results
back into the user's grid is the pipeline's job, so engines never handle affines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

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


class MaskEngine(ABC):
    """Report + bbox + organ maps -> lesion mask."""

    name: str = "abstract"

    @abstractmethod
    def generate_mask(
        self, ctx: LesionContext, bbox: BBox, report: LesionReport, rng: np.random.Generator
    ) -> np.ndarray:
        """Return a bool mask of ``ctx.ct.shape`` that obeys the report's cavity rule and avoids ``ctx.occupied``."""

    def provenance(self) -> dict:
        """Engine name, options and checkpoint hashes, stored with every synthesized lesion."""
        return {"engine": self.name}


class TextureEngine(ABC):
    """CT + mask + report -> CT with the lesion."""

    name: str = "abstract"

    @abstractmethod
    def render(
        self, ctx: LesionContext, lesion_mask: np.ndarray, report: LesionReport, rng: np.random.Generator
    ) -> np.ndarray:
        """Return float32 HU of ``ctx.ct.shape``, equal to ``ctx.ct`` away from the lesion and inside the valid range."""

    def provenance(self) -> dict:
        """Engine name, options and checkpoint hashes, stored with every synthesized lesion."""
        return {"engine": self.name}
