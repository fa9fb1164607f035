"""Bank cases composed at load time: the source's preprocessed case plus the case's preprocessed patch.

A patches bank (`storage: patches`, prepared by synthesis_bank.prepare_patches) keeps each source preprocessed
once and each case as a small preprocessed patch. `ComposedBankDataset` duck-types nnU-Net's dataset
(`load_case` -> data, seg, seg_prev, properties) so nnU-Net's own `nnUNetDataLoader` and augmentation run
unchanged: the arrays it gets are `ComposedArray`s that read only the crop the loader asks for from the
source's Blosc2 file and overlay the patch's part of that crop, so a draw costs what a full copy's draw costs.

The seam for on-the-fly synthesis: the dataset asks a `PatchSource` "give me the patch of case X" and never
looks where it comes from. `PreparedPatchSource` reads the prepared `patches/<case_id>.bin`; an engine-backed
source would synthesize the lesion in the source's preprocessed grid at this call (same `PreparedPatch`
contract: data (C, ...) float32 and seg (1, ...) int16 in the preprocessed grid, their start, and the
composed case's class locations for foreground oversampling) and the trainer would not change.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ld_augment.errors import ConfigError
from synthesis_bank.patch_io import PATCH_SUFFIX, PATCHES, SOURCES

#: bytes of patches each data-loader process keeps in memory (LD_BANK_PATCH_CACHE_MB overrides)
DEFAULT_CACHE_BYTES = int(float(os.environ.get("LD_BANK_PATCH_CACHE_MB", "256")) * 1e6)


@dataclass(frozen=True)
class PreparedPatch:
    data: np.ndarray            # (C, ...) normalized intensities in the preprocessed grid
    seg: np.ndarray             # (1, ...) int16 labels (-1 outside the nonzero mask, as nnU-Net writes)
    start: np.ndarray           # (3,) position of the patch in the source's preprocessed grid
    class_locations: dict       # the patch's own, absolute [c, z, y, x] rows per class (nnU-Net's format)

    drop: dict | None = None    # rows of the source's locations the patch covers, per class (None: compute)

    def merged_locations(self, source_locations: dict) -> dict:
        """The composed case's class locations: the source's outside the patch, the patch's own inside it.
        Classes the patch does not touch keep the source's array itself (no copy)."""
        out = dict(source_locations)
        start, stop = self.start, self.start + np.asarray(self.seg.shape[1:])
        for k in set(source_locations) | set(self.class_locations):
            src = np.asarray(source_locations.get(k, np.zeros((0, 4), np.int64)))
            if src.dtype.kind != "i":   # nnU-Net writes an empty class as a float array
                src = src.astype(np.int64)
            if self.drop is not None:
                rows = self.drop.get(k, ())
            else:
                pos = src.reshape(-1, 4)[:, 1:]
                rows = np.flatnonzero(np.all((pos >= start) & (pos < stop), axis=1))
            own = self.class_locations.get(k)
            if len(rows) == 0 and (own is None or len(own) == 0):
                continue
            out[k] = MergedRows(src.reshape(-1, 4), np.asarray(rows, dtype=np.int64),
                                own if own is not None else np.zeros((0, 4), np.int64))
        return out


class MergedRows:
    """The source's location rows minus `drop`, then `own`, without copying the source's array: nnU-Net's loader
    only takes `len()` and one row (`locs[np.random.choice(len(locs))]`) per draw; `np.asarray` gives it all."""

    def __init__(self, src: np.ndarray, drop: np.ndarray, own: np.ndarray) -> None:
        self.src, self.own = src, np.asarray(own, dtype=np.int64).reshape(-1, 4)
        self.drop = np.sort(drop)
        # kept row i is source row i + (number of dropped rows at or before it): search on drop - position
        self._shift = self.drop - np.arange(len(self.drop))
        self.n_kept = len(src) - len(self.drop)

    def __len__(self) -> int:
        return self.n_kept + len(self.own)

    def __getitem__(self, i: Any) -> np.ndarray:
        if not isinstance(i, (int, np.integer)):
            return np.asarray(self)[i]
        i = int(i) + (len(self) if i < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i >= self.n_kept:
            return self.own[i - self.n_kept]
        return self.src[i + int(np.searchsorted(self._shift, i, side="right"))]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        kept = np.delete(self.src, self.drop, axis=0) if len(self.drop) else self.src
        out = np.concatenate([kept, self.own]) if len(self.own) else np.asarray(kept)
        return out.astype(dtype) if dtype is not None else out


class PatchSource(Protocol):
    """Where a bank case's changed region comes from (prepared files now; an engine at load time next)."""

    def source_of(self, case_id: str) -> str:
        """Key of the preprocessed source case the patch is pasted into."""

    def patch(self, case_id: str) -> PreparedPatch | None:
        """The case's patch, or None when the source key is the whole case (a bank case stored in full)."""


class PreparedPatchSource:
    """Patches written by `synthesis-bank prepare` (patches/<case_id>.bin beside sources/)."""

    def __init__(self, folder: str | Path, cases: dict[str, dict[str, Any]], *,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.folder = Path(folder)
        self.cases = cases
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[str, PreparedPatch] = OrderedDict()
        self._cached = 0

    def source_of(self, case_id: str) -> str:
        return self.cases[case_id]["source"]

    def patch(self, case_id: str) -> PreparedPatch | None:
        if self.cases[case_id].get("method") == "full":
            return None
        hit = self._cache.get(case_id)
        if hit is not None:
            self._cache.move_to_end(case_id)
            return hit
        patch = self._read(case_id)
        size = patch.data.nbytes + patch.seg.nbytes
        if size <= self.cache_bytes:   # patches are small: most banks stay in memory after one epoch
            self._cache[case_id] = patch
            self._cached += size
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.data.nbytes + old.seg.nbytes
        return patch

    def _read(self, case_id: str) -> PreparedPatch:
        entry = self.cases[case_id]
        shape = entry["shape"]
        n_data = int(np.prod(shape))
        n_seg = n_data // shape[0]
        raw = np.fromfile(self.folder / PATCHES / f"{case_id}{PATCH_SUFFIX}", dtype=np.uint8)
        want = n_data * 4 + n_seg * 2 + entry["n_locs"] * 20
        if raw.size != want:
            raise ConfigError(f"{self.folder / PATCHES / (case_id + PATCH_SUFFIX)}: {raw.size} bytes, expected "
                              f"{want}; run synthesis-bank prepare again")
        data = raw[:n_data * 4].view(np.float32).reshape(shape)
        seg = raw[n_data * 4:n_data * 4 + n_seg * 2].view(np.int16).reshape(1, *shape[1:])
        rows = raw[n_data * 4 + n_seg * 2:].view(np.int32).reshape(-1, 5).astype(np.int64)
        keys = [_key(k) for k in entry["loc_keys"]]
        locs = {k: rows[rows[:, 0] == i, 1:] for i, k in enumerate(keys)}
        drop = {_key(json.loads(k)): v for k, v in entry.get("drop", {}).items()}
        return PreparedPatch(data, seg, np.asarray(entry["start"], dtype=np.int64), locs, drop)


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def _ranges(index: Any, shape: Sequence[int]) -> list[tuple[int, int, bool]] | None:
    """(start, stop, keeps_dim) per dimension for basic indexing with unit steps, else None."""
    if not isinstance(index, tuple):
        index = (index,)
    if any(i is Ellipsis for i in index):
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (len(shape) - len(index) + 1) + index[at + 1:]
    index = index + (slice(None),) * (len(shape) - len(index))
    out = []
    for i, n in zip(index, shape):
        if isinstance(i, slice):
            if i.step not in (None, 1):
                return None
            a, b, _ = i.indices(n)
            out.append((a, max(a, b), True))
        elif isinstance(i, (int, np.integer)):
            i = int(i) + (n if i < 0 else 0)
            out.append((i, i + 1, False))
        else:
            return None
    return out


class ComposedArray:
    """A source array with a patch pasted at `start` (spatial dims), materialized only for the slice asked."""

    def __init__(self, base: Any, patch: np.ndarray, start: np.ndarray) -> None:
        self.base, self.patch, self.start = base, patch, np.asarray(start, dtype=np.int64)
        self.shape = tuple(base.shape)
        self.dtype = np.dtype(base.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        ranges = _ranges(index, self.shape)
        if ranges is None:
            return np.asarray(self)[index]
        out = self.base[tuple(slice(a, b) for a, b, _ in ranges)]
        # blosc2 returns a fresh array (written into as is); a numpy or memmap source returns a view: copy
        if not isinstance(out, np.ndarray) or not out.flags.owndata or not out.flags.writeable:
            out = np.array(out, copy=True)
        offset = [0, *self.start.tolist()]
        src, dst = [], []
        for d, (a, b, _) in enumerate(ranges):
            lo, hi = offset[d], offset[d] + self.patch.shape[d]
            x, y = max(a, lo), min(b, hi)
            if x >= y:
                return self._squeeze(out, ranges)
            src.append(slice(x - lo, y - lo))
            dst.append(slice(x - a, y - a))
        out[tuple(dst)] = self.patch[tuple(src)]
        return self._squeeze(out, ranges)

    @staticmethod
    def _squeeze(out: np.ndarray, ranges: list[tuple[int, int, bool]]) -> np.ndarray:
        drop = tuple(d for d, (_, _, keep) in enumerate(ranges) if not keep)
        return out.squeeze(axis=drop) if drop else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        full = self[tuple(slice(None) for _ in self.shape)]
        return full.astype(dtype) if dtype is not None else full

    def __len__(self) -> int:
        return self.shape[0]


class ComposedBankDataset:
    """nnU-Net's dataset interface over a prepared patches bank (`identifiers`, `load_case`)."""

    def __init__(self, folder: str | Path, patch_source: PatchSource, identifiers: Sequence[str]) -> None:
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        self.folder = Path(folder)
        self.patch_source = patch_source
        self.identifiers = list(identifiers)
        keys = sorted({patch_source.source_of(c) for c in self.identifiers})
        sources = self.folder / SOURCES
        missing = [k for k in keys if not (sources / f"{k}.pkl").is_file()]
        if missing:
            raise ConfigError(f"{sources}: {len(missing)} prepared source(s) missing (e.g. {missing[0]}); "
                              "run synthesis-bank prepare again")
        cls = infer_dataset_class(str(sources))
        self.sources = cls(str(sources), identifiers=keys)

    def load_case(self, identifier: str):
        data, seg, seg_prev, properties = self.sources.load_case(self.patch_source.source_of(identifier))
        patch = self.patch_source.patch(identifier)
        if patch is None:
            return data, seg, seg_prev, properties
        properties = dict(properties)
        properties["class_locations"] = patch.merged_locations(properties.get("class_locations") or {})
        return (ComposedArray(data, patch.data, patch.start), ComposedArray(seg, patch.seg, patch.start),
                seg_prev, properties)

    def __getitem__(self, identifier: str):
        return self.load_case(identifier)

    def __len__(self) -> int:
        return len(self.identifiers)


def load_patch_bank(trainer: Any, bank: Path, val_keys: list[str], *, env_name: str):
    """The trainer's `_load_bank` for a patches bank: (dataset, usable keys, excluded, info), with the same
    checks as a full bank (manifest, preprocessing settings, prepared data, leakage by id and content)."""
    from nnunetv2.paths import nnUNet_preprocessed

    from synthesis_bank.nnunet_io import manifest_sha256, prepare_command, preprocessing_sha256, read_bank_cases, \
        sha256_json
    from synthesis_bank.patch_io import load_patch_record, patch_prepared_folder

    name = trainer.plans_manager.dataset_name
    ident = trainer.configuration_manager.data_identifier
    fix = prepare_command(bank, name, trainer.configuration_name, trainer.plans_manager.plans_name)
    folder = patch_prepared_folder(nnUNet_preprocessed.get(), name, ident, bank)
    record = load_patch_record(folder, fix=fix)
    manifest_hash = manifest_sha256(bank)
    if record["manifest_sha256"] != manifest_hash:
        raise ConfigError(f"{env_name}={bank}: the manifest changed since the bank was prepared; run: {fix}")
    current = preprocessing_sha256(trainer.plans_manager.plans, trainer.configuration_manager.configuration,
                                   trainer.dataset_json)
    if record["preprocessing_sha256"] != current:
        raise ConfigError(f"{env_name}={bank} was prepared with other preprocessing settings for {name} "
                          f"(re-planned since?); run: {fix}")
    data_sha = sha256_json({c: v["input"] for c, v in record["cases"].items()})
    if data_sha != record.get("data_sha256"):
        raise ConfigError(f"{folder / 'ldbank.json'}: its cases were edited since prepare; run: {fix}")
    cases = [c for c in read_bank_cases(bank) if c.case_id in record["cases"]]
    missing = [c.case_id for c in cases if record["cases"][c.case_id].get("method") != "full"
               and not (folder / PATCHES / f"{c.case_id}{PATCH_SUFFIX}").is_file()]
    if missing:
        raise ConfigError(f"{folder}: {len(missing)} prepared patch(es) missing (e.g. {missing[0]}); run: {fix}")
    usable, from_val, from_test = trainer._split_leaks(
        cases, val_keys, record.get("target_images", {}), record.get("test_sources_allowed", []),
        record.get("near_duplicates", {}), where=f"{env_name}={bank}")
    keys = [c.case_id for c in usable]
    dataset = ComposedBankDataset(folder, PreparedPatchSource(folder, record["cases"]), keys)
    info = {"manifest_sha256": manifest_hash, "preprocessing_sha256": current, "data_sha256": data_sha,
            "prepared_folder": str(folder), "label_mapping": record.get("label_mapping"), "storage": "patches"}
    excluded = {"validation": [c.case_id for c in from_val], "test": [c.case_id for c in from_test]}
    return dataset, keys, excluded, info
