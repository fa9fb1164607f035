"""Attribute priors of the offline writer: which vocabulary values fit which lesion type.

These are plausible radiological defaults (a cyst is a homogeneous fluid-density round lesion, a stone is a
small hyperdense punctate one, a bladder cancer thickens the wall...), not statistics of a dataset. Every
value is a canonical vocabulary value; a test checks that, so a vocabulary change cannot silently break them.
A lesion type is matched by keywords; an unknown type uses the generic profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Choices = dict[str, float]  # canonical value -> weight


@dataclass(frozen=True)
class LesionProfile:
    """Weighted attribute choices, a CT range (HU) and a size range as a fraction of the organ's smallest extent.

    Fractions stay below ~0.3: the largest box that fits inside a real organ is about a quarter to a half of
    its bbox's smallest side (kidney ~0.25, spleen ~0.3, liver ~0.5 on the bundled TotalSegmentator case).
    """

    name: str
    keywords: tuple[str, ...]
    shape: Choices
    density: Choices
    density_variations: Choices
    margin: Choices  # "well" / "ill": mapped to the organ's surface phrase
    features: Choices  # canonical feature (or "" for none) -> weight
    ct_range: tuple[float, float]
    size_fraction: tuple[float, float]
    max_size: int  # voxels (mm at 1 mm spacing): caps lesions in large organs
    cavity: dict[str, Choices] = field(default_factory=dict)  # "hollow"/"solid" -> cavity weights
    close_relationship: float = 0.15


_SOLID_DEFAULT = {"within the parenchymal organ": 0.85, "protruding from the parenchymal organ": 0.15}
_HOLLOW_WALL = {"wall thickening": 0.8, "within the lumen of a hollow organ": 0.2}
_HOLLOW_LUMEN = {"within the lumen of a hollow organ": 0.85, "wall thickening": 0.15}
_MIXED_AREAS = "presence of increased attenuation areas, presence of decreased attenuation areas"

PROFILES: tuple[LesionProfile, ...] = (
    LesionProfile(
        "stone", ("stone", "calculus", "calculi", "lith"),
        shape={"punctate": 0.6, "round-like": 0.4},
        density={"hyperdense lesion": 1.0}, density_variations={"homogeneous": 0.9, "heterogeneous": 0.1},
        margin={"well": 1.0}, features={"stone": 1.0}, ct_range=(250.0, 900.0),
        size_fraction=(0.04, 0.12), max_size=25,
        cavity={"hollow": _HOLLOW_LUMEN, "solid": {"within the parenchymal organ": 1.0}}, close_relationship=0.0,
    ),
    LesionProfile(
        "cyst", ("cyst", "cystic", "pseudocyst"),
        shape={"round-like": 0.7, "cystic": 0.3},
        density={"hypoattenuating fluid-like lesion": 0.6, "hypodense lesion": 0.4},
        density_variations={"homogeneous": 0.9, "heterogeneous": 0.1},
        margin={"well": 0.9, "ill": 0.1}, features={"": 0.85, "presence of decreased density areas": 0.15},
        ct_range=(0.0, 20.0), size_fraction=(0.06, 0.22), max_size=70, cavity={"solid": _SOLID_DEFAULT},
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
        ct_range=(35.0, 75.0), size_fraction=(0.08, 0.28), max_size=100, cavity={"solid": _SOLID_DEFAULT},
    ),
    LesionProfile(
        "metastasis", ("metasta", "secondary"),
        shape={"round-like": 0.6, "punctate": 0.2, "irregular": 0.2},
        density={"hypodense lesion": 0.7, "ring enhancement": 0.15, "mixed-density lesion": 0.15},
        density_variations={"homogeneous": 0.5, "heterogeneous": 0.5},
        margin={"well": 0.5, "ill": 0.5}, features={"": 0.7, "presence of decreased density areas": 0.3},
        ct_range=(25.0, 60.0), size_fraction=(0.04, 0.15), max_size=50, cavity={"solid": _SOLID_DEFAULT},
    ),
    LesionProfile(
        "abscess", ("abscess",),
        shape={"round-like": 0.6, "irregular": 0.4},
        density={"ring enhancement": 0.6, "hypodense lesion": 0.4}, density_variations={"heterogeneous": 1.0},
        margin={"ill": 0.6, "well": 0.4}, features={"presence of decreased density areas": 0.7, "": 0.3},
        ct_range=(10.0, 35.0), size_fraction=(0.08, 0.22), max_size=70, cavity={"solid": _SOLID_DEFAULT},
    ),
    LesionProfile(
        "lung nodule", ("nodule", "ground-glass", "ground glass", "ggo"),
        shape={"punctate": 0.5, "round-like": 0.4, "irregular": 0.1},
        density={"isodense soft tissue mass": 0.5, "low-density ground-glass opacity": 0.3,
                 "isodense soft tissue mass with peripheral low-density ground-glass opacity": 0.2},
        density_variations={"homogeneous": 0.6, "heterogeneous": 0.4},
        margin={"well": 0.6, "ill": 0.4}, features={"": 0.7, "spiculated margins": 0.3},
        ct_range=(-600.0, 40.0), size_fraction=(0.03, 0.12), max_size=30, cavity={"solid": _SOLID_DEFAULT},
    ),
    LesionProfile(
        "hollow-organ cancer", ("bladder", "gastric", "stomach", "esophag", "oesophag", "colon", "colorectal",
                                "rectal", "gallbladder", "urothelial", "adenocarcinoma of the"),
        shape={"irregular wall thickening": 0.5, "protrusion into the lumen": 0.3, "luminal narrowing": 0.2},
        density={"isodense lesion": 0.5, "isodense soft tissue mass": 0.3, "mixed-density lesion": 0.2},
        density_variations={"heterogeneous": 0.6, "homogeneous": 0.4},
        margin={"ill": 0.6, "well": 0.4}, features={"": 0.8, "presence of decreased density areas": 0.2},
        ct_range=(30.0, 60.0), size_fraction=(0.08, 0.28), max_size=80,
        cavity={"hollow": _HOLLOW_WALL, "solid": _SOLID_DEFAULT}, close_relationship=0.3,
    ),
    LesionProfile(
        "pancreatic tumor", ("pancrea",),
        shape={"irregular": 0.6, "round-like": 0.4},
        density={"hypodense lesion": 0.7, "isodense lesion": 0.3},
        density_variations={"heterogeneous": 0.7, "homogeneous": 0.3},
        margin={"ill": 0.7, "well": 0.3}, features={"": 0.6, "retention of pancreatic fluid": 0.4},
        ct_range=(25.0, 55.0), size_fraction=(0.1, 0.28), max_size=60, cavity={"solid": _SOLID_DEFAULT},
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
        ct_range=(30.0, 65.0), size_fraction=(0.08, 0.25), max_size=90,
        cavity={"hollow": _HOLLOW_WALL, "solid": _SOLID_DEFAULT}, close_relationship=0.3,
    ),
)

GENERIC = LesionProfile(
    "generic lesion", (),
    shape={"round-like": 0.5, "irregular": 0.3, "punctate": 0.2},
    density={"hypodense lesion": 0.6, "isodense lesion": 0.2, "mixed-density lesion": 0.2},
    density_variations={"homogeneous": 0.5, "heterogeneous": 0.5},
    margin={"well": 0.5, "ill": 0.5}, features={"": 0.7, "presence of decreased density areas": 0.3},
    ct_range=(20.0, 60.0), size_fraction=(0.05, 0.2), max_size=70,
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
