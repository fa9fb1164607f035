"""Lesion density physics shared by preprocessing (the report's CT value) and the procedural texture engine.

Three rules live here once so the report and the rendered lesion agree:

* The organ's reference HU is its *parenchyma*: organ voxels in a soft-tissue window, so fat inside or
  around a pancreas, the renal sinus, partial-volume edges and gas in a stomach do not drag the reference
  to fat density (the plain median of a 3 mm pancreas is about -7 HU on the shared scan).
* Per-type bounds: a solid tumour never has fat or water density (>= ``SOLID_MIN_HU``) unless the report
  asks for fat; fluid (cysts) stays near water.
* The contrast phase, inferred from the aorta, sets how far a hypo/hyperdense lesion differs from the organ:
  tumour-to-parenchyma contrast is small without contrast medium and large when the parenchyma enhances.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ld_augment.engines.attributes import LesionSpec, is_bone, is_lung
from ld_augment.errors import InputError
from ld_augment.organs.masks import organ_mask

#: Soft-tissue window (HU) of parenchyma: above water, fat and fat partial volume; below bone and dense contrast.
PARENCHYMA_WINDOW = (15.0, 300.0)
#: Least fraction of organ voxels in the window for it to define the parenchyma (a fatty pancreas on a 1 mm
#: grid interpolated from 3 mm has ~12 %; a bile- or urine-filled organ far less).
PARENCHYMA_MIN_FRACTION = 0.08
#: A solid tumour's mean HU is at least this (non-contrast soft tissue is 20-60 HU; water 0, fat -100).
SOLID_MIN_HU = 15.0
#: Fluid (cyst) HU range: water plus a little protein.
FLUID_HU = (0.0, 12.0)
#: Least |lesion - parenchyma| (HU) of a lesion whose density word says it differs from its organ.
MIN_CONTRAST_HU = 8.0
#: Lung lesion core HU per density class (LIDC-IDRI cores: solid median ~0, IQR -157..59 with partial
#: volume; ground glass median -574, IQR -651..-493; part-solid -218, solid component ~0).
LUNG_HU = {"soft_tissue": (-30.0, 50.0), "hypo": (-30.0, 50.0), "iso": (-30.0, 50.0), "hyper": (20.0, 80.0),
           "mixed": (-40.0, 40.0), "soft_tissue_ggo": (-40.0, 30.0), "ground_glass": (-680.0, -480.0),
           "ring": (-30.0, 50.0)}
#: Solid nodule tissue HU by size from LIDC-IDRI's thin-slice scans (439 solid nodules rated calcification
#: "absent", slices <= 1.3 mm, measured by ``ld_augment.evaluation`` at 1 mm): (equivalent diameter below, mm; HU
#: at the 10/25/50/75/90th percentiles). Each nodule's measured core is corrected for the scanner's blur the
#: writer renders again (``pipeline.synthesize.LUNG_EDGE_FWHM_MM`` under the label): tissue = lung + (core -
#: lung) / the share of contrast its own mask keeps in its core under that blur (median 0.88 under 6 mm, 0.96 at
#: 6-9 mm, 1.0 from 13 mm). The measured cores themselves (6-9 mm median -69 HU), set as tissue and blurred
#: again, came out 60-75 HU lower at 1 mm than the same LIDC nodules (benchmarks/bench_edge_profile.py's scene).
#: Small nodules' tissue is still less dense (finer structure). Thick-slice scans (>= 2 mm) are left out: their
#: cores carry the slice's partial volume (6-9 mm: median -209 HU), which ``pipeline.write_back`` renders again.
LUNG_SOLID_CORE_BY_SIZE = (
    (6.0, (-256.0, -148.0, -54.0, 55.0, 151.0)),
    (9.0, (-160.0, -91.0, -15.0, 34.0, 85.0)),
    (13.0, (-105.0, -5.0, 24.0, 56.0, 88.0)),
    (math.inf, (-43.0, 14.0, 41.0, 64.0, 93.0)),
)
#: The same by the margin word (LIDC margin rating >= 4: "well", sharp; <= 3: "ill", poorly defined), where a
#: size band holds at least 20 such nodules (else the band of all margins above). Poorly defined nodules are
#: less dense (6-9 mm: median -79 HU against -11; 9-13 mm held 12 of them); a report without a margin word takes
#: the table of all margins.
LUNG_SOLID_CORE_BY_MARGIN = {
    "well": (
        (6.0, (-227.0, -134.0, -26.0, 62.0, 142.0)),
        (9.0, (-146.0, -80.0, -11.0, 34.0, 82.0)),
        (13.0, (-36.0, -2.0, 25.0, 56.0, 86.0)),
        (math.inf, (3.0, 26.0, 42.0, 61.0, 85.0)),
    ),
    "ill": (
        (6.0, (-329.0, -234.0, -95.0, 35.0, 152.0)),
        (9.0, (-236.0, -188.0, -79.0, 34.0, 90.0)),
        (13.0, LUNG_SOLID_CORE_BY_SIZE[2][1]),
        (math.inf, (-77.0, -31.0, 31.0, 65.0, 116.0)),
    ),
}
_CORE_LEVELS = (0.10, 0.25, 0.50, 0.75, 0.90)
#: Equivalent diameter of a procedural nodule / its box's geometric-mean side (the level set's lobes fill ~0.6
#: of the box's inscribed ellipsoid).
NODULE_FILL = 0.85
#: Density words that make a lung nodule solid (its core from LUNG_SOLID_CORE_BY_SIZE).
SOLID_NODULE = ("soft_tissue", "hypo", "iso")
#: Aorta median HU above which the scan counts as contrast-enhanced (unenhanced blood is 35-55 HU).
ENHANCED_AORTA_HU = 110.0
#: Aorta median HU above which an enhanced scan counts as arterial phase (portal venous: aorta ~150-200 HU;
#: late arterial: 250-400 HU). The report vocabulary says only "enhanced ct"; the phase sets a type's profile.
ARTERIAL_AORTA_HU = 250.0
#: |lesion - organ| (HU) of a hypo/hyperdense lesion per phase.
CONTRAST_RANGE = {"non-contrast ct": (10.0, 25.0), "enhanced ct": (20.0, 50.0), None: (15.0, 40.0)}


def parenchyma_hu(values: np.ndarray, organ_name: str = "organ") -> float:
    """Robust reference HU of an organ's parenchyma from its voxel values (1-D or any shape).

    Bone and lung keep the plain median (their "parenchyma" is outside the soft-tissue window). When fewer
    than PARENCHYMA_MIN_FRACTION of the voxels (or < 20) fall in the window (a bile- or urine-filled organ), the plain median
    is the honest answer too.
    """
    values = np.asarray(values, dtype=np.float32).ravel()
    if values.size == 0:
        raise ValueError("no organ voxels to measure")
    if is_bone(organ_name) or is_lung(organ_name):
        return float(np.median(values))
    low, high = PARENCHYMA_WINDOW
    soft = values[(values >= low) & (values <= high)]
    if soft.size < max(20, int(PARENCHYMA_MIN_FRACTION * values.size)):
        return float(np.median(values))
    return float(np.median(soft))


def aorta_mask(seg: np.ndarray, version: str) -> np.ndarray | None:
    """The aorta of a multi-class TotalSegmentator map, or None (binary map, or no aorta in the field of view)."""
    if version == "binary":
        return None
    try:
        return organ_mask(seg, "aorta", version=version)
    except InputError:
        return None


def infer_contrast_phase(ct: np.ndarray, aorta: np.ndarray | None) -> str | None:
    """"enhanced ct" / "non-contrast ct" from the aorta's median HU, or None without (enough) aorta voxels."""
    if aorta is None:
        return None
    aorta = np.asarray(aorta, dtype=bool)
    if aorta.sum() < 20:
        return None
    return "enhanced ct" if float(np.median(ct[aorta])) >= ENHANCED_AORTA_HU else "non-contrast ct"


def is_arterial(ct: np.ndarray, aorta: np.ndarray | None) -> bool:
    """Whether an enhanced scan is in the arterial phase (aorta median >= ARTERIAL_AORTA_HU)."""
    if aorta is None:
        return False
    aorta = np.asarray(aorta, dtype=bool)
    return bool(aorta.sum() >= 20 and float(np.median(ct[aorta])) >= ARTERIAL_AORTA_HU)


def phase_of(enhancement_status: Any) -> str | None:
    """The report's enhancement status text as a phase key of ``CONTRAST_RANGE``."""
    text = str(enhancement_status or "").lower()
    if "non" in text or "plain" in text or "unenhanced" in text:
        return "non-contrast ct"
    if "enhanced" in text or "contrast" in text:
        return "enhanced ct"
    return None


def is_solid(spec: LesionSpec, organ_name: str) -> bool:
    """A soft-tissue lesion of a soft-tissue organ (not fluid, not lung/ground glass, not a bone lesion)."""
    if is_lung(organ_name) or is_bone(organ_name):
        return False
    return spec.density not in ("fluid", "ground_glass") and not spec.stone


def fluid_hu(organ_hu: float | None, rng: np.random.Generator) -> float:
    """A cyst's HU: water plus a little protein, and always below the parenchyma (the density word wins)."""
    high = FLUID_HU[1] if organ_hu is None else min(FLUID_HU[1], organ_hu - MIN_CONTRAST_HU)
    low = min(FLUID_HU[0], high - 2.0)
    return float(rng.uniform(low, max(high, low + 1.0)))


def solid_nodule_core_range(size: Sequence[float] | None, margin: str | None = None) -> tuple[float, float]:
    """The 10th-90th percentile tissue HU of LIDC solid nodules of this box size (mm; all sizes when unknown)
    and margin word ("well" / "ill"; others: all margins)."""
    quantiles = _solid_core_quantiles(size, margin)
    return quantiles[0], quantiles[-1]


def _solid_core_quantiles(size: Sequence[float] | None, margin: str | None = None) -> tuple[float, ...]:
    if not size:
        return (-182.0, -93.0, 4.0, 50.0, 111.0)  # LIDC solid tissue (blur-corrected), thin slices, all sizes
    diameter = NODULE_FILL * float(np.exp(np.mean(np.log(np.maximum(np.asarray(size, dtype=float), 1.0)))))
    table = LUNG_SOLID_CORE_BY_MARGIN.get(margin or "", LUNG_SOLID_CORE_BY_SIZE)
    return next(q for limit, q in table if diameter < limit)


def solid_nodule_core_hu(size: Sequence[float] | None, rng: np.random.Generator, margin: str | None = None) -> float:
    """A solid nodule's tissue HU drawn from LIDC's of its size and margin (between the 10th and 90th
    percentile)."""
    return float(np.interp(rng.uniform(_CORE_LEVELS[0], _CORE_LEVELS[-1]), _CORE_LEVELS,
                           _solid_core_quantiles(size, margin)))


def bound_lesion_hu(spec: LesionSpec, hu: float, organ_name: str, rng: np.random.Generator,
                    organ_hu: float | None = None) -> float:
    """``hu`` moved into the type's plausible range; the density word wins over the solid floor.

    Fluid stays near water and below the parenchyma; a solid tumour stays above fat/water density, unless
    that floor would make a "hypodense" lesion as dense as its organ: then it sits MIN_CONTRAST_HU below it.
    """
    if spec.density == "fluid":
        high = 20.0 if organ_hu is None else min(20.0, organ_hu - MIN_CONTRAST_HU)
        return float(hu) if -5.0 <= hu <= high else fluid_hu(organ_hu, rng)
    if is_solid(spec, organ_name) and hu < SOLID_MIN_HU:
        floor = SOLID_MIN_HU + float(rng.uniform(0.0, 5.0))
        if spec.density in ("hypo", "mixed") and organ_hu is not None and floor > organ_hu - MIN_CONTRAST_HU:
            return float(min(max(hu, organ_hu - 1.5 * MIN_CONTRAST_HU), organ_hu - MIN_CONTRAST_HU))
        return floor
    return float(hu)


def lesion_hu(spec: LesionSpec, organ_hu: float, organ_name: str, phase: str | None, rng: np.random.Generator,
              contrast: tuple[float, float] | None = None) -> float:
    """Target core HU of a lesion from its density word, the organ's parenchyma HU and the contrast phase.

    ``contrast`` is the lesion type's own (lesion - parenchyma) range for this phase (reports.priors), used
    for hypo/mixed (and hyper when positive) lesions instead of the generic phase range.
    """
    low, high = CONTRAST_RANGE.get(phase, CONTRAST_RANGE[None])
    if spec.density == "fluid":
        return fluid_hu(None if is_lung(organ_name) or is_bone(organ_name) else organ_hu, rng)
    if is_lung(organ_name) and spec.density in SOLID_NODULE:  # LIDC cores of the nodule's size
        hu = solid_nodule_core_hu(spec.size, rng, spec.margin)
    elif is_lung(organ_name):  # LIDC cores: ground glass about -575 HU, part-solid's solid part about 0
        hu = rng.uniform(*LUNG_HU.get(spec.density, LUNG_HU["soft_tissue"]))
    elif is_bone(organ_name) and spec.density in ("hypo", "ground_glass", "fluid", "mixed"):
        # lytic: bone replaced by soft tissue, never by fat
        hu = rng.uniform(20.0, 60.0) if organ_hu > 150 else max(organ_hu - rng.uniform(40.0, 80.0), 15.0)
    elif is_bone(organ_name) and spec.density == "hyper":  # sclerotic
        hu = organ_hu + rng.uniform(300.0, 600.0)
    elif spec.density in ("hypo", "ground_glass", "mixed", "ring") and contrast is not None and contrast[1] < 0:
        # a ring-enhancing lesion's core is hypodense (the texture engine adds the enhancing rim around it)
        hu = organ_hu + rng.uniform(*contrast)
    elif spec.density == "hyper" and contrast is not None and contrast[0] > 0:
        hu = organ_hu + rng.uniform(*contrast)
    elif spec.density in ("hypo", "ground_glass", "ring"):
        hu = organ_hu - rng.uniform(low, high)
    elif spec.density == "hyper":
        hu = organ_hu + rng.uniform(low, high)
    elif spec.density == "mixed":
        hu = organ_hu - rng.uniform(MIN_CONTRAST_HU, 0.5 * low + MIN_CONTRAST_HU)
    elif spec.density == "soft_tissue":
        hu = organ_hu + rng.uniform(-5.0, 10.0)
    else:  # iso
        hu = organ_hu + rng.uniform(-5.0, 5.0)
    return bound_lesion_hu(spec, float(hu), organ_name, rng, organ_hu)
