"""Patch storage: a bank case kept as its source's reference plus the region synthesis changed.

A synthetic CT differs from its source only near its lesions (`ld_augment.pipeline.write_back`), and its label
differs from the label every case of that source shares (organ and annotated classes) only there too. So a
"patches" bank stores, per case, one `patches/<case_id>.npz` holding

* `box` (3 x 2, half-open, source voxel grid): the smallest box outside which CT and label equal the references;
* `ct` / `label`: the case's stored voxel values inside the box (the CT in the source's raw dtype, unscaled);
* `ct_header` / `label_header`: the case files' NIfTI headers (348 bytes each), so composing writes the same bytes;

and the label outside the box comes from a content-addressed *base label* `bases/<source>_<digest>.npz` that
all cases of one source share (the case label with its new lesions filled from their surroundings: organ inside
the organ). The CT outside the box is the source file itself, referenced by path, sha256 and geometry in the
manifest line. `compose_case` rebuilds the two NIfTI files bit for bit (checked against the sha256 the full
files had, which the manifest line keeps), so a patches bank is the same bank as a full one, smaller on disk.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import nibabel as nib
import numpy as np
from scipy import ndimage

from ld_augment.errors import InputError
from ld_augment.io.atomic import atomic_save_nifti
from ld_augment.io.nifti import sha256_file

STORAGE_MODES = ("full", "patches")
PATCH_DIR = "patches"
BASE_DIR = "bases"
PATCH_FORMAT = "ld-augment-bank-patch/1"
#: an existing base label of the source is used while its patch box is at most this many times the case's own
REUSE_FACTOR = 2


@dataclass(frozen=True)
class CasePatch:
    """One case's changed region in its source's voxel grid (what `patches/<case_id>.npz` holds)."""

    box: np.ndarray            # (3, 2) int, half-open [start, stop) per axis
    ct: np.ndarray             # stored CT values inside the box (source dtype)
    label: np.ndarray          # label values inside the box
    ct_header: bytes
    label_header: bytes

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(int(a), int(b)) for a, b in self.box)  # type: ignore[return-value]


def patch_path(bank: Path, case_id: str) -> Path:
    return Path(bank) / PATCH_DIR / f"{case_id}.npz"


def _header_bytes(img: nib.Nifti1Image) -> bytes:
    return img.header.binaryblock


def _raw(img: nib.Nifti1Image) -> np.ndarray:
    """Stored (unscaled) voxel values: what the file holds, independent of scl_slope/scl_inter."""
    dataobj = img.dataobj
    return np.asarray(dataobj.get_unscaled()) if hasattr(dataobj, "get_unscaled") else np.asarray(dataobj)


def source_reference(path: Path, sha256: str | None = None) -> dict[str, Any]:
    """What a patch case needs to find (and check) its source CT again."""
    img = nib.load(str(path))
    return {"path": str(Path(path).resolve()), "sha256": sha256 or sha256_file(path),
            "shape": [int(n) for n in img.shape[:3]], "affine": np.asarray(img.affine).round(6).tolist(),
            "dtype": str(img.get_data_dtype())}


def base_label_guess(label: np.ndarray, changed_box: tuple[slice, ...], new_values: Iterable[int],
                     fill_value: int | None = None) -> np.ndarray:
    """The case label without its new lesions: inside the CT's changed box, voxels of the new-lesion classes take
    `fill_value` (the organ's label: a new lesion's label lies in its organ) or, without one, the value of the
    nearest other voxel. Only a guess: a wrong fill costs disk (the patch box grows, or another base is
    stored), never correctness, since the patch is cut against the base actually stored."""
    base = np.array(label, copy=True)
    region = base[changed_box]
    lesion = np.isin(region, list(new_values))
    if lesion.any() and fill_value is not None:
        region[lesion] = fill_value
    elif lesion.any() and not lesion.all():
        _, idx = ndimage.distance_transform_edt(lesion, return_indices=True)
        region[lesion] = region[tuple(idx)][lesion]
    return base


def _bbox(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return np.zeros((3, 2), dtype=np.int64)
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return np.array([[s.start, s.stop] for s in box], dtype=np.int64)


def _volume(box: np.ndarray) -> int:
    return int(np.prod(box[:, 1] - box[:, 0]))


def _digest(array: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(array.dtype).encode() + str(array.shape).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Compressed npz written atomically (a temporary name in the same folder, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class BaseLabels:
    """Content-addressed base labels of one bank (`bases/`), shared by all cases of a source."""

    def __init__(self, bank: Path) -> None:
        self.folder = Path(bank) / BASE_DIR
        self._cache: dict[str, np.ndarray] = {}

    def candidates(self, source_sha: str) -> list[str]:
        return sorted(p.name for p in self.folder.glob(f"{source_sha[:16]}_*.npz")) if self.folder.is_dir() else []

    def load(self, name: str) -> np.ndarray:
        if name not in self._cache:
            path = self.folder / name
            if not path.is_file():
                raise InputError(f"{path}: base label missing (a patches bank needs its bases/ folder)")
            self._cache[name] = np.load(path)["label"]
        return self._cache[name]

    def store(self, source_sha: str, label: np.ndarray) -> str:
        name = f"{source_sha[:16]}_{_digest(label)[:16]}.npz"
        if not (self.folder / name).is_file():
            _save_npz(self.folder / name, label=label)
        self._cache[name] = label
        return name


def cut_patch(case_ct: Path, case_label: Path, source_ct: Path, source_sha: str, bases: BaseLabels,
              new_label_values: Iterable[int], fill_value: int | None = None) -> tuple[CasePatch, str] | None:
    """(the case's patch, the name of the base label it is cut against), or None when the case cannot be a
    patch of its source (another shape or dtype than the source: it is stored in full)."""
    ct_img, src_img, lab_img = nib.load(str(case_ct)), nib.load(str(source_ct)), nib.load(str(case_label))
    ct, src, label = _raw(ct_img), _raw(src_img), np.asarray(lab_img.dataobj)
    if ct.shape != src.shape or ct.dtype != src.dtype or label.shape != ct.shape:
        return None
    changed = ct != src
    ct_box = _bbox(changed)
    guess = base_label_guess(label, tuple(slice(int(a), int(b)) for a, b in ct_box), new_label_values, fill_value)
    best: tuple[int, str | None, np.ndarray] | None = None
    for name in bases.candidates(source_sha):   # an existing base of this source, if it is as good as a new one
        base = bases.load(name)
        if base.shape != label.shape or base.dtype != label.dtype:
            continue
        box = _bbox(changed | (label != base))
        if best is None or _volume(box) < best[0]:
            best = (_volume(box), name, box)
    own_box = _bbox(changed | (label != guess))
    # a shared base is worth a somewhat larger box (one base per source instead of one per case)
    if best is None or REUSE_FACTOR * _volume(own_box) < best[0]:
        best = (_volume(own_box), None, own_box)
    _, name, box = best
    if name is None:
        name = bases.store(source_sha, guess)
    sl = tuple(slice(int(a), int(b)) for a, b in box)
    return CasePatch(box, ct[sl].copy(), label[sl].copy(), _header_bytes(ct_img), _header_bytes(lab_img)), name


def save_patch(path: Path, patch: CasePatch) -> None:
    _save_npz(path, box=patch.box, ct=patch.ct, label=patch.label,
              ct_header=np.frombuffer(patch.ct_header, dtype=np.uint8),
              label_header=np.frombuffer(patch.label_header, dtype=np.uint8),
              format=np.array(PATCH_FORMAT))


def load_patch(path: Path) -> CasePatch:
    if not Path(path).is_file():
        raise InputError(f"{path}: patch file missing (listed as ok in the bank manifest)")
    with np.load(path) as z:
        if str(z["format"]) != PATCH_FORMAT:
            raise InputError(f"{path}: not a bank patch (format {z['format']!s}, expected {PATCH_FORMAT})")
        return CasePatch(z["box"].astype(np.int64), z["ct"], z["label"], z["ct_header"].tobytes(),
                         z["label_header"].tobytes())


def _image(data: np.ndarray, header_bytes: bytes) -> nib.Nifti1Image:
    header = nib.Nifti1Header(header_bytes)
    img = nib.Nifti1Image(data, None, header)
    img.set_data_dtype(header.get_data_dtype())
    return img


@functools.lru_cache(maxsize=2)
def _source_raw(path: str, size: int, mtime_ns: int) -> np.ndarray:
    """A source's stored values, cached for the next case of the same source (callers group by source);
    size and mtime are part of the key, so a replaced file is read again."""
    arr = _raw(nib.load(path))
    arr.setflags(write=False)
    return arr


def composed_arrays(bank: Path, entry: dict[str, Any], bases: BaseLabels | None = None,
                    source_ct: Path | None = None) -> tuple[np.ndarray, np.ndarray, CasePatch]:
    """(stored CT values, label) of a patch case in its source's grid, checking the source is unchanged."""
    storage = entry["storage"]
    ref = storage["source"]
    path = Path(source_ct or ref["path"])
    if not path.is_file():
        raise InputError(f"{path}: source CT of bank case {entry['case_id']} not found (a patches bank refers to "
                         "its sources; restore it, or materialize the bank where the sources are)")
    bases = bases or BaseLabels(bank)
    patch = load_patch(Path(bank) / storage["patch"])
    st = path.stat()
    ct = np.array(_source_raw(str(path), st.st_size, st.st_mtime_ns), copy=True)
    if list(ct.shape[:3]) != list(ref["shape"]) or str(ct.dtype) != ref["dtype"]:
        raise InputError(f"{path}: source CT of bank case {entry['case_id']} changed (shape {ct.shape}, dtype "
                         f"{ct.dtype}; the bank recorded {ref['shape']}, {ref['dtype']})")
    label = np.array(bases.load(storage["base_label"]), copy=True)
    ct[patch.slices] = patch.ct
    label[patch.slices] = patch.label
    return ct, label, patch


def compose_case(bank: Path, entry: dict[str, Any], image_out: Path, label_out: Path, *,
                 bases: BaseLabels | None = None, verify: bool = True) -> tuple[Path, Path]:
    """Write a patch case's full CT and label files (atomically); with `verify`, their sha256 must equal the
    ones the full files had when the case was made (InputError otherwise: a source changed in place)."""
    ct, label, patch = composed_arrays(bank, entry, bases)
    atomic_save_nifti(_image(ct, patch.ct_header), image_out)
    atomic_save_nifti(_image(label, patch.label_header), label_out)
    if verify:
        for role, path in (("image", image_out), ("label", label_out)):
            want = (entry.get("files") or {}).get(role, {}).get("sha256")
            if want and sha256_file(path) != want:
                Path(path).unlink(missing_ok=True)
                raise InputError(f"bank case {entry['case_id']}: the composed {role} differs from the one built "
                                 f"(sha256 mismatch); its source {entry['storage']['source']['path']} changed?")
    return Path(image_out), Path(label_out)
