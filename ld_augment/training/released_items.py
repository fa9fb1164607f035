"""Training items exactly as the original's data loader built them (the "released" training recipe).

Fine-tuning the released LMNet / LINet / VQ must show them what they were trained on; the goldens in
reference/training/items pin every field. The original (its LesionDataset with CenterCrop and SegToTensor /
ToTensor), written from that description:

* native spacing, arrays in the [S, A, L] network layout; HU rounded to float16 before anything else;
* when any axis is no larger than the crop, every array is zero-padded AT THE END by crop - size + 8 on each
  axis that needs it -- in HU, before normalisation, so padded CT reads 0 HU (0.5 after normalising);
* the window is centred on the box centre ``(first + last) // 2`` of the LARGEST face-connected lesion
  component and clamped to the (padded) volume; nothing is random once the case is chosen;
* LMNet: x0 = that component only, its one filled box is the third channel, the organ channel is the organ
  map == the report key chosen by the component's overlap (lungs: the union of the report's lobes), texts
  without size / intensity and with the released cavity phrase;
* LINet / VQ: the normalised image and every lesion of the crop; the report key is the organ whose voxels in
  the crop carry the largest SUM OF LABEL VALUES (organ 1 + lesion 2), the CT value reads "57.0 HU,".

A case the original's loader rejects (no lesion, no report key in the crop, a missing "size" / "CT value")
raises :class:`SampleError`; the dataset then draws another case, as the original did.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from ld_augment.engines.diffusion.intensity import normalize_ct
from ld_augment.organs.registry import is_hollow as registry_is_hollow, normalize_organ_name, organ_label_ids
from ld_augment.reports import LesionReport, conditioning_texts
from ld_augment.reports.model import CT_VALUE, SIZE
from ld_augment.training.data import V1_MAX_ID, LoadedCase

PAD_MARGIN = 8  # the original pads crop - size + 8 voxels, not just up to the crop


class SampleError(ValueError):
    """A case the original's loader would reject for this crop (it then drew another random case)."""


#: TotalSegmentator v1 ids of the lung lobes: a lung report's target organ is all of them (the original's union)
LUNG_IDS = frozenset(organ_label_ids("lung", "v1"))


def padded_shape(shape: Sequence[int], crop: Sequence[int]) -> tuple[int, int, int]:
    """The volume size after the original's padding (unchanged unless some axis is <= its crop size)."""
    if not any(int(n) <= int(c) for n, c in zip(shape, crop)):
        return tuple(int(n) for n in shape)  # type: ignore[return-value]
    padded = (int(n) + max(int(c) - int(n) + PAD_MARGIN, 0) for n, c in zip(shape, crop))
    return tuple(padded)  # type: ignore[return-value]


def pad_end(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """`arr` zero-padded at the far end of each axis to `shape` (zero HU for a CT: padding precedes the window)."""
    if tuple(arr.shape) == tuple(shape):
        return arr
    return np.pad(arr, [(0, int(s) - n) for s, n in zip(shape, arr.shape)])


def largest_component(lesion: np.ndarray) -> np.ndarray:
    """The largest face-connected lesion component (bool); ties go to the first in scan order."""
    labels, count = ndimage.label(lesion)
    if count == 0:
        raise SampleError("the case has no lesion voxel")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def window_start(component: np.ndarray, shape: Sequence[int], crop: Sequence[int]) -> tuple[int, int, int]:
    """Start of the window centred on the component's box centre (first + last) // 2, clamped to the volume."""
    where = np.argwhere(component)
    lo, hi = where.min(0), where.max(0)
    start = []
    for a, b, n, c in zip(lo, hi, shape, crop):
        start.append(int(min(max((int(a) + int(b)) // 2 - int(c) // 2, 0), int(n) - int(c))))
    return tuple(start)  # type: ignore[return-value]


def cut(arr: np.ndarray, start: Sequence[int], crop: Sequence[int]) -> np.ndarray:
    return np.ascontiguousarray(arr[tuple(slice(s, s + c) for s, c in zip(start, crop))])


def filled_box(mask: np.ndarray) -> np.ndarray:
    """1 inside the inclusive min..max box of `mask` (float32), zeros when it is empty."""
    out = np.zeros(mask.shape, np.float32)
    where = np.argwhere(mask)
    if len(where):
        lo, hi = where.min(0), where.max(0) + 1
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1.0
    return out


def _keys_present(reports: Sequence[LesionReport], coarseg: np.ndarray) -> list[LesionReport]:
    present = set(np.unique(coarseg).tolist())
    found = [r for r in reports if r.organ_id in present]
    if not found:
        raise SampleError(f"no report key {[r.organ_id for r in reports]} lies in the crop's organ map")
    return found


def lmnet_report(reports: Sequence[LesionReport], coarseg: np.ndarray, x0: np.ndarray) -> LesionReport:
    """The report whose organ holds most of the lesion component (the original's LMNet rule; a case with one
    report key in the crop takes it without looking at the overlap)."""
    found = _keys_present(reports, coarseg)
    if len(found) == 1:
        return found[0]
    overlaps = [int(np.count_nonzero(x0 & (coarseg == r.organ_id))) for r in found]
    if max(overlaps) == 0:
        raise SampleError("the lesion component overlaps none of the report's organs")
    return found[int(np.argmax(overlaps))]


def linet_report(reports: Sequence[LesionReport], coarseg: np.ndarray, label: np.ndarray) -> LesionReport:
    """The report whose organ carries the largest sum of label values in the crop (the original's LINet rule:
    organ voxels count 1, lesion voxels 2, so a large organ beats a small lesion's organ)."""
    found = _keys_present(reports, coarseg)
    sums = [int(label[coarseg == r.organ_id].sum(dtype=np.int64)) for r in found]
    return found[int(np.argmax(sums))]


def require_keys(report: LesionReport, keys: Sequence[str] = (SIZE, CT_VALUE)) -> LesionReport:
    """The report, if it has the attributes the original's loader indexes (else SampleError, like its KeyError)."""
    missing = [k for k in keys if k not in report.attributes]
    if missing:
        raise SampleError(f"the report of organ {report.organ_id} lacks {missing} (the original needs them)")
    return report


def folder_hints(organ_folder: str | None, disease_folder: str | None) -> dict[str, bool | None]:
    """stone / hollow as the original's loader read them from the <organ>/<disease> folder names (None: unknown,
    the report decides)."""
    hollow = None
    if organ_folder:
        try:
            hollow = registry_is_hollow(normalize_organ_name(organ_folder))
        except Exception:  # noqa: BLE001 - a folder that names no known organ leaves the report to decide
            hollow = None
    return {"stone": None if not disease_folder else "stone" in disease_folder.lower(), "hollow": hollow}


def target_organ(seg: np.ndarray, report: LesionReport, reports: Sequence[LesionReport] = ()) -> np.ndarray:
    """The organ map == the report's organ id (a lung report: every lung lobe the case reports), as inference."""
    if report.organ_id in LUNG_IDS:
        return np.isin(seg, [r.organ_id for r in (reports or (report,)) if r.organ_id in LUNG_IDS])
    return seg == report.organ_id


def lmnet_item(loaded: LoadedCase, crop: Sequence[int], *, stone: bool | None = None, hollow: bool | None = None
               ) -> dict[str, Any]:
    """x0 [1, *crop], cond [seg / 104, target organ, box] [3, *crop] and the texts, as the original built them."""
    assert loaded.lesion is not None and loaded.seg_v1 is not None
    shape = padded_shape(loaded.shape, crop)
    component = pad_end(largest_component(loaded.lesion), shape)
    start = window_start(component, shape, crop)
    x0 = cut(component, start, crop)
    seg = cut(pad_end(np.asarray(loaded.seg_v1), shape), start, crop)
    report = lmnet_report(loaded.reports or (loaded.report,), seg, x0)  # type: ignore[arg-type]
    require_keys(report)
    target = target_organ(seg, report, loaded.reports)
    cond = np.stack([seg.astype(np.float32) / V1_MAX_ID, target.astype(np.float32), filled_box(x0)])
    texts = conditioning_texts(report, purpose="lmnet", cavity_text="released", stone=stone, hollow=hollow)
    return {"case_id": loaded.case_id, "texts": texts, "start": torch.tensor(start),
            "x0": torch.from_numpy(x0.astype(np.float32)[None]), "cond": torch.from_numpy(cond),
            "organ_id": report.organ_id}


def image_item(loaded: LoadedCase, crop: Sequence[int]) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(normalised image crop, 0/1/2 label crop, window start) of LINet and the VQ."""
    assert loaded.lesion is not None and loaded.ct is not None and loaded.label is not None
    shape = padded_shape(loaded.shape, crop)
    start = window_start(pad_end(largest_component(loaded.lesion), shape), shape, crop)
    image = normalize_ct(cut(pad_end(np.asarray(loaded.ct), shape), start, crop))  # pad in HU, then normalise
    label = cut(pad_end(np.asarray(loaded.label), shape), start, crop)
    return image, label, start


def linet_item(loaded: LoadedCase, crop: Sequence[int]) -> dict[str, Any]:
    """image [1, *crop] in [0, 1], lesion = every lesion of the crop [1, *crop], texts with "57.0 HU,"."""
    assert loaded.seg_v1 is not None
    image, label, start = image_item(loaded, crop)
    coarseg = cut(pad_end(np.asarray(loaded.seg_v1), padded_shape(loaded.shape, crop)), start, crop)
    report = linet_report(loaded.reports or (loaded.report,), coarseg, label)  # type: ignore[arg-type]
    require_keys(report)
    texts = conditioning_texts(report, purpose="linet", ct_value_text="released")
    return {"case_id": loaded.case_id, "texts": texts, "start": torch.tensor(start),
            "image": torch.from_numpy(image[None]), "lesion": torch.from_numpy((label == 2).astype(np.float32)[None]),
            "organ_id": report.organ_id}


def vq_item(loaded: LoadedCase, crop: Sequence[int]) -> dict[str, Any]:
    """The VQ's crop: LINet's image, centred on the largest lesion."""
    image, _, start = image_item(loaded, crop)
    return {"case_id": loaded.case_id, "image": torch.from_numpy(image[None]), "start": torch.tensor(start)}


def enclosing_box(mask: torch.Tensor) -> torch.Tensor:
    """Per sample, 1 inside one box enclosing every voxel of `mask` [B, 1, ...] (zeros for an empty sample):
    the original's coarse mask, whose volume normalises LINet's L1."""
    out = torch.zeros_like(mask)
    for b in range(mask.shape[0]):
        where = torch.nonzero(mask[b, 0] > 0.5)
        if len(where):
            lo, hi = where.min(0).values.tolist(), (where.max(0).values + 1).tolist()
            out[b, 0][tuple(slice(a, c) for a, c in zip(lo, hi))] = 1.0
    return out
