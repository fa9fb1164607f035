"""Random training crops around lesions, built into the exact network inputs of ARCHITECTURE.md section 3.

Every sample is a pure function of (seed, sample index): `CropDataset[i]` draws from
`numpy.random.default_rng([seed, i])`. The loops ask for indices step * batch_size + b, so a resumed run, a
run with data-loader workers and an uninterrupted run all see the same batches.

LMNet sample: x0 = lesion mask [1, *crop]; cond = [organ seg (v1 id) / 104, target-organ mask, bbox mask]
[3, *crop] (the order the UNet's channels 1-3 expect; the loss weights channel 2, the box). The target organ is
the organ map == the report's organ id (lungs: every lobe), as at inference; the report is the one whose organ
holds most of the sampled component. The box channel is 1 inside the axis-aligned box of every lesion
component touching the crop, so each lesion voxel of x0 lies in a box, as at inference where each component's
box is the request.

items="released" builds every item as the original's loader did instead (``released_items``: centred on the
largest lesion, native spacing, the released texts); a case it rejects is replaced by another drawn case.
LINet sample: image = normalised CT [1, *crop] in [0, 1]; lesion = label == 2 [1, *crop]; the loop encodes the
image with the frozen VQ and downsamples the mask to the latent grid.

Crops are cut from each case as the network sees it: its arrays are viewed in the network's array layout
(``ld_augment.io.network_layout``; SAL = the original's [S, A, L]) before anything else, so crop sizes, crop
origins and lesion boxes are all in network order, exactly as at inference.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from ld_augment.errors import ConfigError, InputError
from ld_augment.io.network_layout import RELEASED, NetworkLayout, layout as as_layout
from ld_augment.reports import conditioning_texts
from ld_augment.training import released_items as R
from ld_augment.training.data import V1_MAX_ID, LoadedCase, TrainingCase, load_case, normalize_hu

KINDS = ("lmnet", "linet", "vq")
ITEMS = ("ours", "released")
MAX_REDRAWS = 20  # cases the released loader may reject in a row before the data set is called unusable
DEFAULT_CROPS = {"lmnet": (64, 152, 152), "linet": (128, 128, 128), "vq": (128, 128, 128)}
AIR_HU = -1000.0
BODY_HU = -500.0  # VQ crops are centred on voxels denser than this (not on the air around the patient)


@dataclass(frozen=True)
class Component:
    lo: tuple[int, int, int]  # inclusive
    hi: tuple[int, int, int]  # exclusive
    voxels: int


def lesion_components(lesion: np.ndarray) -> list[Component]:
    """Connected lesion components (26-connectivity), largest first."""
    labels, count = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    comps = []
    for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is not None:
            comps.append(Component(tuple(s.start for s in sl), tuple(s.stop for s in sl), int(sizes[idx])))
    return sorted(comps, key=lambda c: -c.voxels)  # type: ignore[arg-type]


def crop_start(lo: Sequence[int], hi: Sequence[int], shape: Sequence[int], crop: Sequence[int],
               rng: np.random.Generator) -> tuple[int, ...]:
    """A random crop origin keeping the box [lo, hi) inside the crop and the crop inside the volume if possible.

    Where the volume is smaller than the crop the origin is negative (the crop is padded) and centred; where
    the box is larger than the crop, the crop is centred on the box.
    """
    start = []
    for a, b, n, c in zip(lo, hi, shape, crop):
        if n <= c:
            start.append(-((c - n) // 2))
            continue
        first, last = max(b - c, 0), min(a, n - c)
        if first > last:  # the box does not fit: centre on it, clamped to the volume
            start.append(int(np.clip((a + b - c) // 2, 0, n - c)))
        else:
            start.append(int(rng.integers(first, last + 1)))
    return tuple(start)


def extract(arr: np.ndarray, start: Sequence[int], crop: Sequence[int], fill: float) -> np.ndarray:
    """arr[start : start + crop] with out-of-volume voxels set to `fill`."""
    out = np.full(tuple(crop), fill, dtype=arr.dtype)
    src, dst = [], []
    for s, c, n in zip(start, crop, arr.shape):
        a, b = max(s, 0), min(s + c, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - s, a - s + max(0, b - a)))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def bbox_mask(components: Sequence[Component], start: Sequence[int], crop: Sequence[int]) -> np.ndarray:
    """1 inside the (crop-clipped) box of every component that overlaps the crop."""
    out = np.zeros(tuple(crop), dtype=np.float32)
    for comp in components:
        lo = [max(a - s, 0) for a, s in zip(comp.lo, start)]
        hi = [min(b - s, c) for b, s, c in zip(comp.hi, start, crop)]
        if all(h > l for l, h in zip(lo, hi)):
            out[tuple(slice(l, h) for l, h in zip(lo, hi))] = 1.0
    return out


def check_crop(crop: Sequence[int], divisor: int, what: str) -> tuple[int, int, int]:
    """A 3-tuple of positive sizes that are multiples of `divisor` (the network's down-sampling)."""
    size = tuple(int(c) for c in crop)
    if len(size) != 3 or min(size) < 1:
        raise ConfigError(f"{what} crop size must be 3 positive integers, got {list(crop)}")
    bad = [c for c in size if c % divisor]
    if bad:
        raise ConfigError(f"{what} crop size {list(size)} must be multiples of {divisor} (the network's "
                          f"down-sampling); e.g. {[max(divisor, c // divisor * divisor) for c in size]}")
    return size  # type: ignore[return-value]


class CropDataset(torch.utils.data.Dataset):
    """Infinite map-style dataset of crops; item i is determined by (seed, i). Loaded cases are LRU-cached."""

    def __init__(self, cases: Sequence[TrainingCase], kind: str, crop: Sequence[int], *, seed: int = 0,
                 spacing: Sequence[float] | None = (1.0, 1.0, 1.0), cache_size: int = 16,
                 min_component_voxels: int = 10, layout: str | NetworkLayout = RELEASED, sampling: str = "random",
                 iter_num: int | None = None, items: str = "ours") -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown crop kind {kind!r}; valid: {list(KINDS)}")
        if not cases:
            raise ConfigError("CropDataset needs at least one case")
        self.cases, self.kind, self.crop, self.seed = list(cases), kind, tuple(int(c) for c in crop), int(seed)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.cache_size, self.min_component_voxels = max(1, int(cache_size)), int(min_component_voxels)
        # the array layout the network learns in; `crop` is in its order
        self.layout = as_layout(layout, "layout")
        self._cache: OrderedDict[int, tuple[LoadedCase, Any]] = OrderedDict()
        # random: each sample a random case (the original's random_sample, iter_num samples an epoch);
        # sequential: each epoch visits every case once, in a seeded order
        if sampling not in ("random", "sequential"):
            raise ConfigError(f"unknown sampling {sampling!r}; valid: ['random', 'sequential']")
        self.sampling = sampling
        if items not in ITEMS:
            raise ConfigError(f"unknown items {items!r}; valid: {list(ITEMS)}")
        self.items = items
        self.epoch_length = int(iter_num) if (iter_num and sampling == "random") else len(self.cases)

    def case_index(self, index: int, rng: np.random.Generator) -> int:
        """Which case sample `index` crops (a function of the seed and the index alone)."""
        pick = int(rng.integers(len(self.cases)))
        if self.sampling == "random":
            return pick
        epoch, pos = divmod(int(index), len(self.cases))
        return int(np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.cases))[pos])

    def __len__(self) -> int:
        return 2**62  # indices are drawn by the caller; any index is a valid sample

    def case(self, index: int) -> tuple[LoadedCase, Any]:
        """Loaded case `index` and its lesion components (VQ: body voxel coordinates), cached."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        released = self.items == "released"
        loaded = self._in_layout(load_case(self.cases[index], spacing=self.spacing, need_ct=self.kind != "lmnet",
                                           need_lesion=released or self.kind != "vq", float16_hu=released,
                                           need_organs=self.kind != "vq"))
        if released:
            extra: Any = None
        elif self.kind == "vq":
            body = np.argwhere(loaded.ct > BODY_HU)  # type: ignore[operator]
            extra: Any = body[:: max(1, len(body) // 100_000)] if len(body) else np.zeros((0, 3), int)
        else:
            extra = lesion_components(loaded.lesion)  # type: ignore[arg-type]
        self._cache[index] = (loaded, extra)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return loaded, extra

    def _in_layout(self, loaded: LoadedCase) -> LoadedCase:
        """The case's arrays as views in the network's layout (no copy; crops copy what they take)."""
        lay = self.layout
        view = {name: None if getattr(loaded, name) is None else lay.to_network(getattr(loaded, name))
                for name in ("ct", "lesion", "organ", "seg_v1", "label")}
        return replace(loaded, shape=lay.network_shape(loaded.shape), **view)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(index)])
        case_index = self.case_index(index, rng)
        if self.items == "released":
            return self.released_item(case_index, rng)
        loaded, extra = self.case(case_index)
        if self.kind == "vq":
            return self._vq_item(loaded, extra, rng)
        big = [c for c in extra if c.voxels >= self.min_component_voxels] or extra
        comp = big[int(rng.integers(len(big)))]
        start = crop_start(comp.lo, comp.hi, loaded.shape, self.crop, rng)
        lesion = extract(loaded.lesion, start, self.crop, 0).astype(np.float32)  # type: ignore[arg-type]
        seg_crop = extract(loaded.seg_v1, start, self.crop, 0)  # type: ignore[arg-type]
        report = loaded.report if len(loaded.reports) <= 1 else _report_of(
            loaded, seg_crop, extract(_component_mask(loaded, comp), start, self.crop, False))
        texts = conditioning_texts(report, purpose=self.kind)  # type: ignore[arg-type]
        item: dict[str, Any] = {"case_id": loaded.case_id, "texts": texts, "start": torch.tensor(start)}
        if self.kind == "lmnet":
            seg = seg_crop.astype(np.float32) / V1_MAX_ID
            organ = R.target_organ(seg_crop, report, loaded.reports).astype(np.float32)
            box = bbox_mask(extra, start, self.crop)
            item["x0"] = torch.from_numpy(lesion[None])
            item["cond"] = torch.from_numpy(np.stack([seg, organ, box]))
        else:
            image = normalize_hu(extract(loaded.ct, start, self.crop, AIR_HU))  # type: ignore[arg-type]
            item["image"] = torch.from_numpy(image[None])
            item["lesion"] = torch.from_numpy(lesion[None])
            item["box"] = torch.from_numpy(bbox_mask(extra, start, self.crop)[None])  # the loss's coarse mask
        return item

    def released_item(self, case_index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """The original's item for the case; a case its loader rejects is replaced by another drawn one."""
        rng = rng if rng is not None else np.random.default_rng([self.seed, case_index, 11])
        problems = []
        for _ in range(MAX_REDRAWS):
            loaded, _ = self.case(case_index)
            try:
                if self.kind == "lmnet":
                    case = self.cases[case_index]
                    return R.lmnet_item(loaded, self.crop, **R.folder_hints(case.organ_folder, case.disease))
                return R.linet_item(loaded, self.crop) if self.kind == "linet" else R.vq_item(loaded, self.crop)
            except R.SampleError as exc:
                problems.append(f"{loaded.case_id}: {exc}")
                case_index = int(rng.integers(len(self.cases)))
        raise InputError(f"{MAX_REDRAWS} drawn cases in a row cannot give a released training item: "
                         + "; ".join(problems[:5]))

    def _vq_item(self, loaded: LoadedCase, body: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        if len(body):
            centre = body[int(rng.integers(len(body)))]
        else:
            centre = np.array([int(rng.integers(n)) for n in loaded.shape])
        start = crop_start(centre, centre + 1, loaded.shape, self.crop, rng)
        image = normalize_hu(extract(loaded.ct, start, self.crop, AIR_HU))  # type: ignore[arg-type]
        return {"case_id": loaded.case_id, "image": torch.from_numpy(image[None]), "start": torch.tensor(start)}


def _component_mask(loaded: LoadedCase, comp: Component) -> np.ndarray:
    """The lesion voxels inside the component's box (its own voxels, plus any other lesion sharing the box)."""
    out = np.zeros(loaded.shape, bool)
    box = tuple(slice(a, b) for a, b in zip(comp.lo, comp.hi))
    out[box] = np.asarray(loaded.lesion)[box]
    return out


def _report_of(loaded: LoadedCase, seg_crop: np.ndarray, component: np.ndarray) -> Any:
    """The report whose organ holds most of the sampled component (the case's picked report if none does)."""
    reports = loaded.reports
    overlaps = [int(np.count_nonzero(component & (seg_crop == r.organ_id))) for r in reports]
    return reports[int(np.argmax(overlaps))] if max(overlaps) > 0 else loaded.report


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep texts as a list of per-sample attribute lists (what the text encoders take)."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
