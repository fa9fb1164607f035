"""Real (and synthetic) lesions as feature rows plus patches, from LIDC nodule VOIs or labelled nnU-Net datasets.

Every loader resamples each case to one common spacing first (``to_common_spacing``), so a 0.7 mm LIDC VOI
and a 3 mm synthetic case are measured on the same grid. Rows carry the features of ``lesion_features`` plus
``case``, ``organ``, ``lesion_type`` and whatever attributes the source knows (LIDC ratings, a bank's report).
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np

from ld_augment.errors import InputError
from ld_augment.io.dataset_json import read_dataset_json as read_json_file
from ld_augment.evaluation.lesion_features import (
    count_components, lesion_components, lung_mask_from_hu, measure_lesion, to_common_spacing,
)
from ld_augment.evaluation.patches import PATCH_MM, centre_of, lesion_free_centres, patch_at, patch_voxels

#: Label names taken for "lesion" when the user names none.
LESION_WORDS = ("lesion", "tumor", "tumour", "cancer", "nodule", "cyst", "mass", "metasta", "carcinoma", "neoplasm")
#: LIDC rating columns carried into each row (numeric values, 1..5/6).
LIDC_RATINGS = ("Texture", "Margin", "Spiculation", "Lobulation", "Sphericity", "Calcification",
                "InternalStructure", "Subtlety", "Malignancy")
#: Source voxels kept around the lesion/organ when cropping a large CT before resampling (mm).
CROP_MARGIN_MM = 30.0

#: A caller's own per-lesion measurement, added to the lesion's row: (ct, lesion, organ, grid spacing, the source
#: image's affine) -> extra fields. For what a comparison must not see (a calibration's blur correction needs
#: the source grid), so such fields stay out of ``FEATURES`` and the classifier.
LesionHook = Callable[[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray],
                      Mapping[str, float]]


@dataclass
class LesionSet:
    """Feature rows (one per lesion), each lesion's centred patch, and lesion-free patches of the same data."""

    name: str
    spacing: tuple[float, float, float]
    rows: list[dict[str, Any]] = field(default_factory=list)
    positives: list[np.ndarray] = field(default_factory=list)
    negatives: list[np.ndarray] = field(default_factory=list)
    negative_groups: list[dict[str, str]] = field(default_factory=list)  # organ of each negative patch

    def extend(self, other: "LesionSet") -> None:
        self.rows += other.rows
        self.positives += other.positives
        self.negatives += other.negatives
        self.negative_groups += other.negative_groups


def lidc_texture_class(value: float) -> str:
    """LIDC Texture rating -> the vocabulary's density classes (1-2 ground glass, 3 part-solid, 4-5 solid)."""
    return "ground-glass" if value <= 2 else "part-solid" if value == 3 else "solid"


def _measure_case(ct: np.ndarray, lesion: np.ndarray, organ: np.ndarray, spacing: tuple[float, float, float], *,
                  base: Mapping[str, Any], per_component: bool, min_voxels: int, patch_mm: float,
                  negatives: int, rng: np.random.Generator, out: LesionSet, extra: LesionHook | None = None,
                  source_affine: np.ndarray | None = None) -> None:
    size = patch_voxels(spacing, patch_mm)
    comps = lesion_components(lesion, min_voxels) if per_component else ([lesion] if lesion.any() else [])
    total = count_components(lesion)
    for i, comp in enumerate(comps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            feats = measure_lesion(ct, comp, organ, spacing, components=total)
            if extra is not None:
                feats.update(extra(ct, comp, organ, spacing, np.asarray(source_affine, dtype=np.float64)))
        out.rows.append({**base, "lesion_index": i, **feats})
        out.positives.append(patch_at(ct, centre_of(comp), size))
    for c in lesion_free_centres(lesion, organ & ~lesion, size, negatives, rng):
        out.negatives.append(patch_at(ct, c, size))
        out.negative_groups.append({"organ": str(base.get("organ", ""))})


#: HU of the lung put beyond a VOI's end slices when none of its own is aerated (LIDC parenchyma median).
LIDC_LUNG_HU = -800.0


def lung_beyond_end_slices(image: nib.spatialimages.SpatialImage, mask: nib.spatialimages.SpatialImage,
                           spacing: Sequence[float]) -> tuple[nib.Nifti1Image, nib.Nifti1Image, nib.Nifti1Image]:
    """An LIDC VOI with lung added beyond its first and last slices, its mask with none, and which voxels are real.

    The VOIs end at the nodule's own end slices. Averaged to a coarser grid (``to_common_spacing``), their edge
    values were carried on past the end: the nodule's last slice stood in for the lung beyond it, so the end slab
    of a 3 mm voxel held nodule where a 3 mm scan holds nodule and lung. The added slices hold the VOI's own lung
    HU (median of its aerated voxels, ``LIDC_LUNG_HU`` if none), enough of them for the new grid's averaging.
    """
    affine = np.asarray(image.affine, dtype=np.float64)
    axis = int(np.argmax(np.abs(affine[2, :3])))  # the voxel axis running along the scanner's z (the slices)
    step = float(np.sqrt((affine[:3, axis] ** 2).sum()))
    pad = int(math.ceil(max(float(s) for s in spacing) / step)) + 1
    ct = np.asarray(image.dataobj, dtype=np.float32)
    lesion = np.asarray(mask.dataobj) > 0
    air = ct[(ct < -400.0) & ~lesion]
    lung_hu = float(np.median(air)) if air.size else LIDC_LUNG_HU
    widths = [(pad, pad) if a == axis else (0, 0) for a in range(3)]
    shifted = affine.copy()
    shifted[:3, 3] -= pad * affine[:3, axis]
    known = np.pad(np.ones(ct.shape, np.uint8), widths)
    return (nib.Nifti1Image(np.pad(ct, widths, constant_values=lung_hu), shifted),
            nib.Nifti1Image(np.pad(lesion.astype(np.uint8), widths), shifted), nib.Nifti1Image(known, shifted))


def load_lidc(root: str | Path, spacing: Sequence[float], *, limit: int | None = None, patch_mm: float = PATCH_MM,
              negatives_per_case: int = 0, seed: int = 0, extra: LesionHook | None = None) -> LesionSet:
    """The LIDC nodule VOIs (``images/``, ``masks/``, ``metadata.csv``) as rows with the radiologists' ratings
    (``rating_texture``, ``rating_margin``, ``rating_spiculation``, ...: the numeric values of metadata.csv).

    Each mask is one nodule (its components counted, not split). The lung around it is derived by thresholding
    air (no lung label exists in the VOIs), so ``inside_organ_fraction`` is set to NaN (it would be 1 by
    construction). The VOIs have no margin along z: shells come from in-plane context, and lesion-free patches
    (``negatives_per_case``, default none) would be VOI corners padded with their edge, not lung tissue.
    ``extra`` adds a caller's fields to each row (:data:`LesionHook`).
    """
    root = Path(root)
    meta_path = root / "metadata.csv"
    if not meta_path.is_file():
        raise InputError(f"{root}: not an LIDC nodule folder (no metadata.csv)")
    with open(meta_path, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    sp = tuple(float(s) for s in spacing)
    out = LesionSet(name=f"LIDC ({root.name})", spacing=sp)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    for row in table[: limit if limit is not None else len(table)]:
        case = f"{row['patient_id']}_R_{row['nodule_id']}"
        image, mask = root / "images" / f"{case}.nii.gz", root / "masks" / f"{case}.nii.gz"
        if not image.is_file() or not mask.is_file():
            continue  # the README lists two masks without images; metadata rows without files are skipped
        voi, voi_mask, known = lung_beyond_end_slices(nib.load(str(image)), nib.load(str(mask)), sp)
        ct, (lesion, inside), grid = to_common_spacing(voi, [voi_mask, known], sp)
        if not lesion.any():
            continue  # too small to survive resampling to this spacing
        organ = lung_mask_from_hu(ct, lesion, grid) & inside  # the added slices are no parenchyma sample
        ratings = {f"rating_{k.lower()}": float(row[f"{k}_value"]) for k in LIDC_RATINGS if row.get(f"{k}_value", "") != ""}
        base = {"case": case, "organ": "lung", "lesion_type": "lung nodule", **ratings,
                "texture_class": lidc_texture_class(ratings.get("rating_texture", 5.0)),
                "reported_diameter_mm": float(row.get("diameter_mm") or "nan")}
        _measure_case(ct, lesion, organ, grid, base=base, per_component=False, min_voxels=1, patch_mm=patch_mm,
                      negatives=negatives_per_case, rng=rng, out=out, extra=extra, source_affine=voi.affine)
        if out.rows and out.rows[-1]["case"] == case:
            out.rows[-1]["inside_organ_fraction"] = math.nan
    if not out.rows:
        raise InputError(f"{root}: no nodule could be measured (image/mask pairs missing?)")
    return out


def read_dataset_json(root: Path) -> dict[str, Any]:
    return read_json_file(Path(root) / "dataset.json")


def label_roles(labels: Mapping[str, Any], lesion_labels: Sequence[str] | None,
                organ_labels: Sequence[str] | None, origin: str) -> tuple[list[int], list[int]]:
    """(lesion ids, organ ids) from dataset.json labels. Lesions by name (default: names with a lesion word);
    organs by name (default: every other non-background, non-ignore label)."""
    ids: dict[str, int] = {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{origin}: label {name!r} is {value!r}; region-based labels are not supported here")
        ids[str(name)] = value
    lowered = {n.lower(): n for n in ids}
    if lesion_labels:
        missing = [n for n in lesion_labels if n.lower() not in lowered]
        if missing:
            raise InputError(f"{origin}: no label named {missing}; labels: {sorted(ids)}")
        lesion = [ids[lowered[n.lower()]] for n in lesion_labels]
    else:
        lesion = [v for n, v in ids.items() if any(w in n.lower() for w in LESION_WORDS)]
        if not lesion:
            raise InputError(f"{origin}: no lesion label found by name ({sorted(ids)}); pass --lesion-label NAME")
    if organ_labels:
        missing = [n for n in organ_labels if n.lower() not in lowered]
        if missing:
            raise InputError(f"{origin}: no label named {missing}; labels: {sorted(ids)}")
        organ = [ids[lowered[n.lower()]] for n in organ_labels]
    else:
        organ = [v for n, v in ids.items() if v != 0 and v not in lesion and n.lower() != "ignore"]
    return lesion, organ


def _crop_image(img: nib.spatialimages.SpatialImage, keep: np.ndarray) -> tuple[Any, tuple[slice, ...]]:
    """Slices of the bbox of ``keep`` plus CROP_MARGIN_MM (source voxels), so large CTs resample cheaply."""
    zooms = img.header.get_zooms()[:3]
    idx = np.nonzero(keep)
    sl = tuple(slice(max(int(i.min()) - int(math.ceil(CROP_MARGIN_MM / float(z))), 0),
                     min(int(i.max()) + int(math.ceil(CROP_MARGIN_MM / float(z))) + 1, n))
               for i, z, n in zip(idx, zooms, img.shape[:3]))
    return img.slicer[sl], sl


def dataset_cases(root: Path, data: Mapping[str, Any]) -> list[tuple[str, Path, Path]]:
    """(case id, image, label) of every labelled case in an nnU-Net raw dataset (channel 0000)."""
    ending = str(data.get("file_ending") or ".nii.gz")
    labels_dir = root / "labelsTr"
    if not labels_dir.is_dir():
        raise InputError(f"{root}: not an nnU-Net raw dataset (no labelsTr/)")
    out = []
    for label in sorted(labels_dir.glob(f"*{ending}")):
        case = label.name[: -len(ending)]
        image = root / "imagesTr" / f"{case}_0000{ending}"
        if not image.is_file():
            raise InputError(f"{label}: no image {image.name} in imagesTr/")
        out.append((case, image, label))
    return out


def load_nnunet_raw(root: str | Path, spacing: Sequence[float], *, lesion_labels: Sequence[str] | None = None,
                    organ_labels: Sequence[str] | None = None, organ_name: str = "organ",
                    lesion_type: str = "lesion", case_meta: Mapping[str, Mapping[str, Any]] | None = None,
                    cases: Iterable[str] | None = None, min_voxels: int = 3, patch_mm: float = PATCH_MM,
                    negatives_per_case: int = 4, seed: int = 0, extra: LesionHook | None = None) -> LesionSet:
    """Every lesion (connected component of the lesion label(s)) of a labelled nnU-Net raw dataset.

    The organ is the union of the organ labels (none: every voxel outside the lesions counts, so the
    parenchyma shell is whatever surrounds the lesion). ``case_meta`` adds per-case fields (a bank's organ,
    lesion type and report attributes) and overrides ``organ_name``/``lesion_type``. ``extra`` adds a caller's
    fields to each row (:data:`LesionHook`).
    """
    root = Path(root)
    data = read_dataset_json(root)
    lesion_ids, organ_ids = label_roles(data["labels"], lesion_labels, organ_labels, str(root / "dataset.json"))
    sp = tuple(float(s) for s in spacing)
    out = LesionSet(name=str(data.get("name") or root.name), spacing=sp)  # type: ignore[arg-type]
    wanted = set(cases) if cases is not None else None
    rng = np.random.default_rng(seed)
    for case, image, label in dataset_cases(root, data):
        if wanted is not None and case not in wanted:
            continue
        label_img = nib.load(str(label))
        lab = np.asarray(label_img.dataobj)
        if not np.isin(lab, lesion_ids).any():
            continue
        keep = np.isin(lab, lesion_ids + organ_ids)
        label_crop, sl = _crop_image(label_img, keep)
        image_img = nib.load(str(image))
        if image_img.shape[:3] != label_img.shape[:3]:
            raise InputError(f"{image}: shape {image_img.shape[:3]} differs from its label's {label_img.shape[:3]}")
        lab_crop = np.asarray(label_crop.dataobj)
        lesion_img = nib.Nifti1Image(np.isin(lab_crop, lesion_ids).astype(np.uint8), label_crop.affine)
        organ_arr = np.isin(lab_crop, organ_ids) if organ_ids else np.ones(lab_crop.shape, bool)
        organ_img = nib.Nifti1Image(organ_arr.astype(np.uint8), label_crop.affine)
        ct, (lesion, organ), grid = to_common_spacing(image_img.slicer[sl], [lesion_img, organ_img], sp)
        meta = dict((case_meta or {}).get(case, {}))
        base = {"case": case, "organ": meta.pop("organ", organ_name), "lesion_type": meta.pop("lesion_type", lesion_type),
                **meta}
        _measure_case(ct, lesion, organ, grid, base=base, per_component=True, min_voxels=min_voxels,
                      patch_mm=patch_mm, negatives=negatives_per_case, rng=rng, out=out, extra=extra,
                      source_affine=image_img.affine)
    return out




def group_key(row: Mapping[str, Any]) -> str:
    """"organ / lesion type" of a row (the unit a comparison reports on)."""
    return f"{row.get('organ', '?')} / {row.get('lesion_type', '?')}"
