"""Attribute priors of the offline writer: which vocabulary values and which sizes fit which lesion type.

The attribute weights are plausible radiological defaults (a cyst is a homogeneous fluid-density round
lesion, a stone is a small hyperdense punctate one, a bladder cancer thickens the wall...), not statistics
of a dataset. Every value is a canonical vocabulary value; a test checks that, so a vocabulary change cannot
silently break them. A lesion type is matched by keywords; an unknown type uses the generic profile.

Sizes are clinical: each profile carries a log-normal distribution of the lesion's equivalent diameter in
mm (median, log-space spread, and the range it is truncated to). The figures are rounded typical values
from the sources named on each ``SizePrior`` (dataset statistics and radiology references); they are not
fitted to any one dataset, and a user who needs another distribution passes a size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Choices = dict[str, float]  # canonical value -> weight


@dataclass(frozen=True)
class SizePrior:
    """Log-normal equivalent diameter (mm): ``median * exp(sigma * N(0, 1))``, redrawn outside ``[low, high]``."""

    median_mm: float
    sigma: float
    low_mm: float
    high_mm: float
    source: str
    #: Log-space spread of each axis around the diameter (aspect ratios; 0.12 gives ~0.8-1.25).
    axis_sigma: float = 0.12
    #: Share of the writer's scan-dependent size floor (3 source voxels across) this type keeps: lung nodules
    #: stand out from aerated lung at 2 voxels across, and most real ones are smaller than 3 (LIDC: 64 % < 9 mm).
    floor_share: float = 1.0


@dataclass(frozen=True)
class LesionProfile:
    """Weighted attribute choices, a CT range (HU) and a clinical size distribution (mm).

    ``wall_thickness_mm`` is the pathological wall thickness a wall-thickening lesion of this type reaches
    (hollow organs only; the normal distended gastric/bladder wall is <= 3-5 mm).
    """

    name: str
    keywords: tuple[str, ...]
    shape: Choices
    density: Choices
    density_variations: Choices
    margin: Choices  # "well" / "ill": mapped to the organ's surface phrase
    features: Choices  # canonical feature (or "" for none) -> weight
    ct_range: tuple[float, float]
    size: SizePrior
    cavity: dict[str, Choices] = field(default_factory=dict)  # "hollow"/"solid" -> cavity weights
    close_relationship: float = 0.15
    wall_thickness_mm: tuple[float, float] = (8.0, 20.0)
    #: (lesion - parenchyma) HU range of the type's hypo/mixed (or, when positive, hyper) lesions per scan phase
    #: ("non-contrast ct" / "enhanced ct"); empty: the generic phase range (engines.procedural.density).
    contrast_hu: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: (word, size prior) pairs: a report whose shape or specific features name the word draws its size from that
    #: prior instead of ``size`` (first match wins). Real attributes follow size: LIDC's spiculated nodules have a
    #: median diameter of 16.6 mm, lobulated 11.2 mm, the others 6.2 mm.
    size_by_word: tuple[tuple[str, SizePrior], ...] = ()
    #: Density words by scan phase where the phase changes them ("arterial": an arterial-phase scan, which the
    #: report vocabulary calls "enhanced ct" too); contrast_hu may hold the same phase key.
    density_by_phase: dict[str, Choices] = field(default_factory=dict)

    def size_for(self, words: str) -> SizePrior:
        """The size prior of a report whose shape and specific features read ``words``."""
        text = words.lower()
        return next((prior for word, prior in self.size_by_word if word in text), self.size)


_SOLID_DEFAULT = {"within the parenchymal organ": 0.85, "protruding from the parenchymal organ": 0.15}
_HOLLOW_WALL = {"wall thickening": 0.8, "within the lumen of a hollow organ": 0.2}
_HOLLOW_LUMEN = {"within the lumen of a hollow organ": 0.85, "wall thickening": 0.15}
_MIXED_AREAS = "presence of increased attenuation areas, presence of decreased attenuation areas"

# Clinical size distributions (equivalent diameter, mm). Sources, by profile:
SIZE_STONE = SizePrior(5.0, 0.55, 2.0, 25.0,
                       "urolithiasis/cholelithiasis series: most urinary stones 2-10 mm, gallstones 2-30 mm "
                       "(EAU urolithiasis guideline; Radiopaedia 'gallstones')")
SIZE_CYST = SizePrior(15.0, 0.6, 5.0, 80.0,
                      "simple hepatic and renal cysts: most 5-50 mm at incidental CT (Bosniak classification "
                      "v2019, Silverman et al., Radiology 2019; Radiopaedia 'simple renal cyst')")
SIZE_HCC = SizePrior(40.0, 0.55, 10.0, 150.0,
                     "HCC at diagnosis: median ~3-5 cm, BCLC early stage <= 3 nodules <= 3 cm, advanced > 10 cm "
                     "(EASL HCC guideline 2018); LiTS tumours span < 10 mm to > 100 mm (Bilic et al., MedIA 2023)")
SIZE_RCC = SizePrior(40.0, 0.5, 15.0, 120.0,
                     "RCC: KiTS19 surgical cohort tumours mostly 2-10 cm, median ~4 cm (Heller et al., MedIA "
                     "2021); T1a <= 4 cm is the commonest incidental stage (AJCC 8th ed.)")
SIZE_PANCREAS = SizePrior(28.0, 0.4, 12.0, 80.0,
                          "pancreatic ductal adenocarcinoma: median ~3 cm at diagnosis, T1 <= 2 cm a minority "
                          "(AJCC 8th ed.; MSD Task07 pancreas tumours, Antonelli et al., Nat Commun 2022)")
SIZE_METASTASIS = SizePrior(16.0, 0.6, 6.0, 80.0,
                            "metastases: DeepLesion RECIST long axes median ~1.5-2 cm, most 5-60 mm (Yan et al., "
                            "J Med Imaging 2018); RECIST 1.1 measurable lesion >= 10 mm")
SIZE_ABSCESS = SizePrior(45.0, 0.45, 15.0, 120.0,
                         "pyogenic liver abscess: typically 3-8 cm at CT (Radiopaedia 'hepatic abscess'; "
                         "Mavilia et al., J Clin Transl Hepatol 2016)")
SIZE_NODULE = SizePrior(7.7, 0.49, 3.8, 33.5,
                        "LIDC-IDRI nodules (994, ../shared/data/lesions/lidc_nodules): equivalent diameter median "
                        "7.7 mm, IQR 6.0-11.7, range 3.8-33.5; 64 % under 9 mm (Armato et al., Med Phys 2011); "
                        "rated ovoid or linear far more often than round (LIDC sphericity ratings 2-4: 80 %)",
                        axis_sigma=0.2, floor_share=0.6)
#: LIDC nodules by rating (metadata diameter_mm): spiculation >= 3 median 16.6 mm (IQR 11.1-20.3, n 87);
#: lobulation >= 2 median 11.2 mm (IQR 7.0-16.9, n 259); neither ~6.2 mm (IQR 5.0-8.3).
SIZE_NODULE_SPICULATED = SizePrior(17.0, 0.42, 5.0, 33.5, "LIDC-IDRI nodules rated spiculation >= 3 (n 87): diameter "
                                   "median 16.6 mm, IQR 11.1-20.3", axis_sigma=0.2, floor_share=0.6)
SIZE_NODULE_LOBULATED = SizePrior(12.0, 0.5, 4.0, 33.5, "LIDC-IDRI nodules rated lobulation >= 2 (n 259): diameter "
                                  "median 11.2 mm, IQR 7.0-16.9", axis_sigma=0.2, floor_share=0.6)
SIZE_NODULE_PLAIN = SizePrior(6.5, 0.41, 3.8, 33.5, "LIDC-IDRI nodules rated neither spiculated nor lobulated: "
                              "diameter median ~6.2 mm, IQR 5.0-8.3", axis_sigma=0.2, floor_share=0.6)
SIZE_HEMANGIOMA = SizePrior(20.0, 0.6, 5.0, 100.0,
                            "hepatic haemangioma: most < 30 mm, giant > 40-100 mm (Radiopaedia 'hepatic "
                            "haemangioma'; EASL benign liver tumour guideline 2016)")
SIZE_HOLLOW = SizePrior(35.0, 0.4, 15.0, 90.0,
                        "gastric/colorectal/bladder cancer: tumour extent along the wall typically 2-8 cm, wall "
                        "thickness 10-20 mm vs normal <= 5 mm (Radiopaedia 'gastric adenocarcinoma'; ESUR bladder)")
SIZE_TUMOR = SizePrior(30.0, 0.5, 10.0, 120.0,
                       "solid abdominal malignancies: typically 1-10 cm at CT (DeepLesion abdomen/kidney/liver "
                       "subsets, Yan et al. 2018)")
SIZE_GENERIC = SizePrior(18.0, 0.6, 5.0, 80.0, "generic focal lesion: DeepLesion overall, most 5-60 mm (Yan et al. 2018)")

PROFILES: tuple[LesionProfile, ...] = (
    LesionProfile(
        "stone", ("stone", "calculus", "calculi", "lith"),
        shape={"punctate": 0.6, "round-like": 0.4},
        density={"hyperdense lesion": 1.0}, density_variations={"homogeneous": 0.9, "heterogeneous": 0.1},
        margin={"well": 1.0}, features={"stone": 1.0}, ct_range=(250.0, 900.0),
        size=SIZE_STONE,
        cavity={"hollow": _HOLLOW_LUMEN, "solid": {"within the parenchymal organ": 1.0}}, close_relationship=0.0,
    ),
    LesionProfile(
        "cyst", ("cyst", "cystic", "pseudocyst"),
        shape={"round-like": 0.7, "cystic": 0.3},
        density={"hypoattenuating fluid-like lesion": 0.6, "hypodense lesion": 0.4},
        density_variations={"homogeneous": 0.9, "heterogeneous": 0.1},
        margin={"well": 0.9, "ill": 0.1}, features={"": 0.85, "presence of decreased density areas": 0.15},
        ct_range=(0.0, 20.0), size=SIZE_CYST, cavity={"solid": _SOLID_DEFAULT},
        close_relationship=0.05,
    ),
    LesionProfile(
        "hepatocellular carcinoma", ("hepatocellular", "hcc", "hepatoma"),
        shape={"round-like": 0.5, "irregular": 0.5},
        density={"hypodense lesion": 0.5, "mixed-density lesion": 0.3, "isodense lesion": 0.2},
        density_variations={"heterogeneous": 0.8, "homogeneous": 0.2},
        margin={"ill": 0.6, "well": 0.4},
        features={_MIXED_AREAS: 0.3, "presence of decreased density areas": 0.3,
                  "presence of increased density areas": 0.15, "": 0.25},
        ct_range=(35.0, 75.0), size=SIZE_HCC, cavity={"solid": _SOLID_DEFAULT},
        # slightly hypodense unenhanced; arterial hyperenhancement; washout below the liver in the portal venous
        # phase (LI-RADS major features: nonrim arterial phase hyperenhancement, nonperipheral washout)
        contrast_hu={"non-contrast ct": (-20.0, -8.0), "enhanced ct": (-40.0, -10.0), "arterial": (15.0, 50.0)},
        density_by_phase={"arterial": {"hyperdense lesion": 0.8, "mixed-density lesion": 0.2}},
    ),
    LesionProfile(
        "hemangioma", ("hemangioma", "haemangioma"),
        shape={"round-like": 0.8, "irregular": 0.2},
        density={"hypodense lesion": 1.0},
        density_variations={"homogeneous": 0.7, "heterogeneous": 0.3},
        margin={"well": 0.9, "ill": 0.1}, features={"": 0.6, "presence of increased density areas": 0.4},
        ct_range=(30.0, 50.0), size=SIZE_HEMANGIOMA, cavity={"solid": {"within the parenchymal organ": 1.0}},
        close_relationship=0.05,
        # blood-pool density: below the liver unenhanced; portal venous: near the liver with bright nodules
        contrast_hu={"non-contrast ct": (-22.0, -8.0), "enhanced ct": (-25.0, -8.0)},
    ),
    LesionProfile(
        "metastasis", ("metasta", "secondary"),
        shape={"round-like": 0.6, "punctate": 0.2, "irregular": 0.2},
        density={"hypodense lesion": 0.7, "ring enhancement": 0.15, "mixed-density lesion": 0.15},
        density_variations={"homogeneous": 0.5, "heterogeneous": 0.5},
        margin={"well": 0.5, "ill": 0.5}, features={"": 0.7, "presence of decreased density areas": 0.3},
        ct_range=(25.0, 60.0), size=SIZE_METASTASIS, cavity={"solid": _SOLID_DEFAULT},
        # real contrast-enhanced liver metastases: contrast to the liver median -47 HU, range -84..+1
        contrast_hu={"non-contrast ct": (-30.0, -8.0), "enhanced ct": (-80.0, -15.0)},
    ),
    LesionProfile(
        "abscess", ("abscess",),
        shape={"round-like": 0.6, "irregular": 0.4},
        density={"ring enhancement": 0.6, "hypodense lesion": 0.4}, density_variations={"heterogeneous": 1.0},
        margin={"ill": 0.6, "well": 0.4}, features={"presence of decreased density areas": 0.7, "": 0.3},
        ct_range=(10.0, 35.0), size=SIZE_ABSCESS, cavity={"solid": _SOLID_DEFAULT},
    ),
    LesionProfile(
        "lung nodule", ("nodule", "ground-glass", "ground glass", "ggo"),
        # LIDC ratings: lobulation >= 2 ("irregular") in 26 % of nodules; the rest round to ovoid
        shape={"round-like": 0.5, "punctate": 0.24, "irregular": 0.26},
        density={"isodense soft tissue mass": 0.5, "low-density ground-glass opacity": 0.3,
                 "isodense soft tissue mass with peripheral low-density ground-glass opacity": 0.2},
        density_variations={"homogeneous": 0.6, "heterogeneous": 0.4},
        # LIDC: spiculation >= 3 in 9 % of nodules
        margin={"well": 0.6, "ill": 0.4}, features={"": 0.91, "spiculated margins": 0.09},
        ct_range=(-600.0, 40.0), size=SIZE_NODULE, cavity={"solid": _SOLID_DEFAULT},
        size_by_word=(("spiculat", SIZE_NODULE_SPICULATED), ("irregular", SIZE_NODULE_LOBULATED),
                      ("round", SIZE_NODULE_PLAIN), ("punctate", SIZE_NODULE_PLAIN)),
    ),
    LesionProfile(
        "hollow-organ cancer", ("bladder", "gastric", "stomach", "esophag", "oesophag", "colon", "colorectal",
                                "rectal", "gallbladder", "urothelial", "adenocarcinoma of the"),
        shape={"irregular wall thickening": 0.5, "protrusion into the lumen": 0.3, "luminal narrowing": 0.2},
        density={"isodense lesion": 0.5, "isodense soft tissue mass": 0.3, "mixed-density lesion": 0.2},
        density_variations={"heterogeneous": 0.6, "homogeneous": 0.4},
        margin={"ill": 0.6, "well": 0.4}, features={"": 0.8, "presence of decreased density areas": 0.2},
        ct_range=(30.0, 60.0), size=SIZE_HOLLOW,
        cavity={"hollow": _HOLLOW_WALL, "solid": _SOLID_DEFAULT}, close_relationship=0.3,
        wall_thickness_mm=(10.0, 20.0),
    ),
    LesionProfile(
        "renal cell carcinoma", ("renal cell", "rcc", "kidney cancer", "renal cancer", "renal carcinoma",
                                 "renal tumo", "kidney tumo"),
        shape={"round-like": 0.6, "irregular": 0.4},
        density={"hypodense lesion": 0.45, "mixed-density lesion": 0.35, "isodense lesion": 0.2},
        density_variations={"heterogeneous": 0.75, "homogeneous": 0.25},
        margin={"well": 0.6, "ill": 0.4},
        features={"": 0.5, "presence of decreased density areas": 0.35, _MIXED_AREAS: 0.15},
        ct_range=(25.0, 45.0), size=SIZE_RCC,
        contrast_hu={"non-contrast ct": (-15.0, -8.0), "enhanced ct": (-70.0, -20.0)},
        # RCC grows exophytically in about half of cases (cortical origin)
        cavity={"solid": {"within the parenchymal organ": 0.55, "protruding from the parenchymal organ": 0.45}},
        close_relationship=0.3,
    ),
    LesionProfile(
        "pancreatic tumor", ("pancrea",),
        shape={"irregular": 0.6, "round-like": 0.4},
        density={"hypodense lesion": 0.7, "isodense lesion": 0.3},
        density_variations={"heterogeneous": 0.7, "homogeneous": 0.3},
        margin={"ill": 0.7, "well": 0.3}, features={"": 0.6, "retention of pancreatic fluid": 0.4},
        ct_range=(25.0, 55.0), size=SIZE_PANCREAS,
        # PDAC: iso to slightly hypo unenhanced, hypoenhancing against the pancreatic phase gland
        contrast_hu={"non-contrast ct": (-15.0, -8.0), "enhanced ct": (-50.0, -15.0)},
        # a pancreatic mass usually deforms the gland's contour (focal contour abnormality in most adenocarcinomas
        # at CT; Radiopaedia 'pancreatic ductal adenocarcinoma'): often larger than the gland is thick
        cavity={"solid": {"within the parenchymal organ": 0.35, "protruding from the parenchymal organ": 0.65}},
        close_relationship=0.4,
    ),
    LesionProfile(
        "malignant tumor", ("carcinoma", "cancer", "malignan", "tumor", "tumour", "neoplasm", "mass", "sarcoma",
                            "lymphoma"),
        shape={"irregular": 0.6, "round-like": 0.4},
        density={"hypodense lesion": 0.5, "mixed-density lesion": 0.3, "isodense lesion": 0.2},
        density_variations={"heterogeneous": 0.75, "homogeneous": 0.25},
        margin={"ill": 0.65, "well": 0.35},
        features={"": 0.5, "presence of decreased density areas": 0.3, _MIXED_AREAS: 0.2},
        ct_range=(30.0, 65.0), size=SIZE_TUMOR,
        cavity={"hollow": _HOLLOW_WALL, "solid": _SOLID_DEFAULT}, close_relationship=0.3,
    ),
)

GENERIC = LesionProfile(
    "generic lesion", (),
    shape={"round-like": 0.5, "irregular": 0.3, "punctate": 0.2},
    density={"hypodense lesion": 0.6, "isodense lesion": 0.2, "mixed-density lesion": 0.2},
    density_variations={"homogeneous": 0.5, "heterogeneous": 0.5},
    margin={"well": 0.5, "ill": 0.5}, features={"": 0.7, "presence of decreased density areas": 0.3},
    ct_range=(20.0, 60.0), size=SIZE_GENERIC,
    cavity={"hollow": _HOLLOW_LUMEN, "solid": _SOLID_DEFAULT},
)

# Surface phrases by organ family: the vocabulary has organ-specific margin wordings.
SURFACE_PHRASES = {
    "kidney": {"well": "clear boundary with the renal parenchyma", "ill": "unclear boundary with the renal parenchyma"},
    "esophagus": {"well": "well-defined margin", "ill": "poorly defined boundary with normal esophageal tissue"},
    "hollow": {"well": "clear serosal surface", "ill": "serosal surface irregularity"},
    "solid": {"well": "well-defined margin", "ill": "ill-defined margin"},
}
HOLLOW_ONLY_SHAPES = frozenset({"irregular wall thickening", "luminal narrowing", "protrusion into the lumen"})
#: Shapes that ARE the wall: they need the "wall thickening" cavity (a box inside the lumen has no wall).
WALL_SHAPES = frozenset({"irregular wall thickening", "luminal narrowing"})


def profile_for(lesion_type: str) -> LesionProfile:
    """The first profile whose keyword occurs in the lesion type (case-insensitive), else the generic one."""
    text = " ".join(lesion_type.lower().replace("_", " ").split())
    for profile in PROFILES:
        if any(keyword in text for keyword in profile.keywords):
            return profile
    return GENERIC


def surface_family(organ_name: str, hollow: bool) -> str:
    if organ_name.startswith("kidney"):
        return "kidney"
    if organ_name == "esophagus":
        return "esophagus"
    return "hollow" if hollow else "solid"
