"""`synthesis-bank prepare` for a patches bank: each source preprocessed once, each case as a preprocessed patch.

nnU-Net's preprocessing of a case is transpose -> crop to nonzero -> normalize -> resample. For a case that is
its source plus a patch, every step but resampling acts voxel by voxel on CT (CTNormalization uses the plans'
global intensity properties), so the preprocessed case is the preprocessed source with the preprocessed patch
pasted in. This module computes that patch with nnU-Net's own preprocessor pieces, on a window around the
patch only ("local"), and the trainer composes the case at load time (nnunet_trainers.composed):

* `local`: the configuration does not resample this source (its spacing is the target's): the window is
  normalized by the preprocessor's own `_normalize`; exact (the test checks bit equality with full
  preprocessing).
* `local-resampled`: the configuration resamples: the window plus a context margin is normalized by nnU-Net and
  resampled at the full case's own sample positions (the grid-mode mapping nnU-Net's resize uses: cubic spline
  for the data, linear per-label indicators for the label). Equal to full preprocessing within the tolerance
  the tests state (the spline prefilter of a window differs from the whole volume's by a term that decays
  with the margin; label ties broken by nearest neighbour).
* `exact`: everything else (another normalization, anisotropic separate-z resampling, a reader that reorients,
  a patch that changes the nonzero crop): the composed case is preprocessed in full by nnU-Net and only the
  region where it differs from its source is kept. Exact, costs a full preprocessing at prepare time.

Disk under nnUNet_preprocessed then grows with the lesions (one preprocessed copy per source, plus patches).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from ld_augment.errors import InputError
from ld_augment.io.atomic import atomic_write_json

from synthesis_bank import patch_store
from synthesis_bank.label_mapping import remap
from synthesis_bank.patch_io import PATCH_PREPARED_FORMAT, PATCH_SUFFIX, PATCHES, RECORD, SOURCES, bank_id, \
    patch_prepared_folder
from synthesis_bank.nnunet_io import sha256_json

#: a cubic spline's prefilter spreads a changed input voxel over its neighbours with weights ~0.27^distance, so
#: output voxels within RESAMPLE_REACH input voxels of the change are recomputed (0.27^6 ~ 4e-4 of the change),
#: from a window with CONTEXT_MARGIN more voxels of context (the window's own prefilter edge decays the same way)
RESAMPLE_REACH = 6
CONTEXT_MARGIN = 8
POINTWISE_NORMALIZATIONS = {"CTNormalization", "NoNormalization"}
REVERSING_READERS = {"SimpleITKIO", "NibabelIO"}


@dataclass
class _Source:
    """One source (with one base label and label mapping) as nnU-Net reads and preprocesses it."""

    key: str
    data: np.ndarray        # reader space (C, ...) float32
    seg: np.ndarray         # reader space (1, ...)
    props: dict             # after preprocessing (bbox_used_for_cropping, class_locations, ...)
    pre_data: np.ndarray
    pre_seg: np.ndarray
    nonzero: np.ndarray     # transposed + cropped nonzero mask (nnU-Net's create_nonzero_mask)
    norm_range: tuple[float, float]  # normalized data range before resampling (nnU-Net's resize clips to it)
    reversed_axes: bool     # the reader's array is the NIfTI voxel array with reversed axes


class _Context:
    def __init__(self, pm: Any, cm: Any, dataset_json: dict, out: Path) -> None:
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

        self.pm, self.cm, self.dataset_json, self.out = pm, cm, dataset_json, out
        self.preprocessor = cm.preprocessor_class(verbose=False)
        if not isinstance(self.preprocessor, DefaultPreprocessor):
            self.preprocessor = DefaultPreprocessor(verbose=False)
        self.rw = pm.image_reader_writer_class()
        self.tf = list(pm.transpose_forward)
        lm = pm.get_label_manager(dataset_json)
        self.collect = list(lm.foreground_regions if lm.has_regions else lm.foreground_labels)
        if lm.has_ignore_label:
            self.collect.append([-1] + lm.all_labels)
        self.pointwise = all(s in POINTWISE_NORMALIZATIONS for s in cm.normalization_schemes)


def _write_label(array: np.ndarray, like: nib.Nifti1Image, path: Path) -> Path:
    img = nib.Nifti1Image(array, like.affine, like.header)
    img.set_data_dtype(array.dtype)
    nib.save(img, str(path))
    return path


def _preprocess(ctx: _Context, data: np.ndarray, seg: np.ndarray, props: dict):
    """nnU-Net's own run_case_npy on copies (it normalizes a view of its input in place)."""
    return ctx.preprocessor.run_case_npy(data.copy(), seg.copy(), dict(props), ctx.pm, ctx.cm, ctx.dataset_json)


def _save_source(ctx: _Context, key: str, data: np.ndarray, seg: np.ndarray, props: dict) -> None:
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int16, copy=False)
    blocks, chunks = comp_blosc2_params(data.shape, tuple(ctx.cm.patch_size), data.itemsize)
    blocks_s, chunks_s = comp_blosc2_params(seg.shape, tuple(ctx.cm.patch_size), seg.itemsize)
    folder = ctx.out / SOURCES
    folder.mkdir(parents=True, exist_ok=True)
    nnUNetDatasetBlosc2.save_case(data, seg, props, str(folder / key), chunks=chunks, blocks=blocks,
                                  chunks_seg=chunks_s, blocks_seg=blocks_s)


def load_source(ctx: _Context, key: str, ct_path: Path, base_label: np.ndarray, tmp: Path) -> _Source:
    """Read and preprocess one source with its (mapped) base label; save it under sources/."""
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

    ct_img = nib.load(str(ct_path))
    label_file = _write_label(base_label, ct_img, tmp / f"{key}_label.nii.gz")
    data, props = ctx.rw.read_images([str(ct_path)])
    seg, _ = ctx.rw.read_seg(str(label_file))
    raw = np.asarray(patch_store._raw(ct_img))
    reversed_axes = (type(ctx.rw).__name__ in REVERSING_READERS and data.shape[1:] == raw.shape[::-1]
                     and np.array_equal(data[0], raw.transpose(2, 1, 0).astype(np.float32))
                     and np.array_equal(seg[0], base_label.transpose(2, 1, 0)))
    pre_data, pre_seg, pre_props = _preprocess(ctx, data, seg, props)
    _save_source(ctx, key, pre_data, pre_seg, pre_props)
    transposed = data.transpose([0, *[i + 1 for i in ctx.tf]])
    crop = tuple(slice(a, b) for a, b in pre_props["bbox_used_for_cropping"])
    cropped = np.array(transposed[(slice(None), *crop)], dtype=np.float32)
    nonzero = create_nonzero_mask(cropped)
    tseg = seg.transpose([0, *[i + 1 for i in ctx.tf]])
    normed = ctx.preprocessor._normalize(cropped, np.array(tseg[(slice(None), *crop)]), ctx.cm,
                                         ctx.pm.foreground_intensity_properties_per_channel)
    return _Source(key, data, seg, pre_props, pre_data, pre_seg, nonzero,
                   (float(normed.min()), float(normed.max())), reversed_axes)


def _bbox(mask: np.ndarray) -> np.ndarray | None:
    if not mask.any():
        return None
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return np.array([[s.start, s.stop] for s in box], dtype=np.int64)


def _composed_reader_arrays(ctx: _Context, src: _Source, ct_raw: np.ndarray, label: np.ndarray,
                            headers: tuple[bytes, bytes], tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """The composed case as nnU-Net's reader returns it: by axis reversal when the source proved that this
    is what the reader does, else by writing and reading it."""
    if src.reversed_axes:
        return (ct_raw.transpose(2, 1, 0).astype(np.float32)[None],
                label.transpose(2, 1, 0).astype(src.seg.dtype)[None])
    ct_file, label_file = tmp / "case_0000.nii.gz", tmp / "case_label.nii.gz"
    nib.save(patch_store._image(ct_raw, headers[0]), str(ct_file))
    img = patch_store._image(label.astype(label.dtype), headers[1])
    img.set_data_dtype(label.dtype)
    nib.save(img, str(label_file))
    data, _ = ctx.rw.read_images([str(ct_file)])
    seg, _ = ctx.rw.read_seg(str(label_file))
    return data, seg


def _locations(ctx: _Context, seg_patch: np.ndarray, start: np.ndarray, seed: int) -> dict:
    """The patch's own class locations (nnU-Net's sampler on the patch; absolute coordinates). The composed
    case's are the source's outside the patch plus these (nnunet_trainers.composed merges them at load time)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    inside = DefaultPreprocessor._sample_foreground_locations(seg_patch, ctx.collect, seed=seed)
    out = {}
    for k, locs in inside.items():
        locs = np.asarray(locs, dtype=np.int64).reshape(-1, 4).copy()
        locs[:, 1:] += np.asarray(start, dtype=np.int64)
        out[k] = locs
    return out


def _resample_window(ctx: _Context, src: _Source, win_data: np.ndarray, win_seg: np.ndarray, p: np.ndarray,
                     a: np.ndarray, b: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output voxels [a, b) of the full case, sampled from the input window starting at p (grid mode)."""
    axes = [(np.arange(a[d], b[d]) + 0.5) * factors[d] - 0.5 - p[d] for d in range(3)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    order = int(ctx.cm.configuration.get("resampling_fn_data_kwargs", {}).get("order", 3))
    order_seg = int(ctx.cm.configuration.get("resampling_fn_seg_kwargs", {}).get("order", 1))
    data = np.stack([ndimage.map_coordinates(win_data[c].astype(np.float64), coords, order=order, mode="nearest")
                     for c in range(win_data.shape[0])]).astype(np.float32)
    lo = min(src.norm_range[0], float(win_data.min()))
    hi = max(src.norm_range[1], float(win_data.max()))
    np.clip(data, lo, hi, out=data)
    labels = np.unique(win_seg)
    scores = np.stack([ndimage.map_coordinates((win_seg[0] == v).astype(np.float64), coords, order=order_seg,
                                               mode="nearest") for v in labels])
    best = np.argmax(scores, axis=0)
    top = np.sort(scores, axis=0)
    tie = (top[-1] - top[-2] < 1e-9) if len(labels) > 1 else np.zeros(best.shape, bool)
    seg = labels[best]
    if tie.any():
        nearest = ndimage.map_coordinates(win_seg[0].astype(np.float64), coords, order=0, mode="nearest")
        seg[tie] = nearest[tie].astype(seg.dtype)
    return data, seg[None].astype(np.int16)


def case_patch(ctx: _Context, src: _Source, ct_raw: np.ndarray, label: np.ndarray, nib_box: np.ndarray,
               headers: tuple[bytes, bytes], tmp: Path, seed: int) -> dict[str, Any]:
    """The preprocessed patch of one composed case: data, seg, start (preprocessed grid), class locations,
    method. `nib_box` is the stored patch box (source voxel order)."""
    data, seg = _composed_reader_arrays(ctx, src, ct_raw, label, headers, tmp)
    diff = (data != src.data).any(0) | (seg != src.seg)[0]
    rbox = _bbox(diff)
    if rbox is None:   # the case equals its source here (cannot happen for a synthesized case)
        return {"method": "local", "data": src.pre_data[:, :1, :1, :1].copy(),
                "seg": src.pre_seg[:, :1, :1, :1].astype(np.int16), "start": np.zeros(3, np.int64),
                "class_locations": {}}
    tbox = rbox[ctx.tf]
    crop = np.asarray(src.props["bbox_used_for_cropping"], dtype=np.int64)
    cbox = tbox - crop[:, :1]
    cropped_shape = crop[:, 1] - crop[:, 0]
    new_shape = np.asarray(src.pre_data.shape[1:])
    tdata = data.transpose([0, *[i + 1 for i in ctx.tf]])
    tseg = seg.transpose([0, *[i + 1 for i in ctx.tf]])
    inside = bool(np.all(cbox[:, 0] >= 1) and np.all(cbox[:, 1] <= cropped_shape - 1))
    method = "exact"
    if inside and ctx.pointwise:
        sl = tuple(slice(int(x), int(y)) for x, y in tbox)
        csl = tuple(slice(int(x), int(y)) for x, y in cbox)
        # the nonzero mask (holes filled) is unchanged when the source's is all True around the patch (new
        # zeros there are holes enclosed by it) or when the patch changes no voxel's zero-ness
        ring = tuple(slice(max(int(x) - 1, 0), int(y) + 1) for x, y in cbox)
        same_zero = bool(src.nonzero[ring].all()) or np.array_equal(
            tdata[(slice(None), *sl)] != 0, src.data.transpose([0, *[i + 1 for i in ctx.tf]])[(slice(None), *sl)] != 0)
        if same_zero and np.array_equal(new_shape, cropped_shape):
            method = "local"
        elif same_zero and not _separate_z(ctx, src):
            method = "local-resampled"
    if method == "local":
        win = np.array(tdata[(slice(None), *sl)], dtype=np.float32)
        win_seg = np.array(tseg[(slice(None), *sl)], dtype=np.int16)
        win = ctx.preprocessor._normalize(win, win_seg, ctx.cm, ctx.pm.foreground_intensity_properties_per_channel)
        win_seg[(win_seg == 0) & ~src.nonzero[csl][None]] = -1
        start = cbox[:, 0]
        return {"method": method, "data": win.astype(np.float32), "seg": win_seg,
                "start": start, "class_locations": _locations(ctx, win_seg, start, seed)}
    if method == "local-resampled":
        factors = cropped_shape / new_shape
        lo, hi = cbox[:, 0], cbox[:, 1]
        a = np.maximum(0, np.ceil((lo - RESAMPLE_REACH + 0.5) / factors - 0.5)).astype(np.int64)
        b = np.minimum(new_shape, np.floor((hi - 1 + RESAMPLE_REACH + 0.5) / factors - 0.5).astype(np.int64) + 1)
        p = np.maximum(0, np.floor((a + 0.5) * factors - 0.5).astype(np.int64) - CONTEXT_MARGIN)
        q = np.minimum(cropped_shape, np.ceil((b - 0.5) * factors - 0.5).astype(np.int64) + CONTEXT_MARGIN + 1)
        wsl = tuple(slice(int(x + c0), int(y + c0)) for x, y, c0 in zip(p, q, crop[:, 0]))
        win = np.array(tdata[(slice(None), *wsl)], dtype=np.float32)
        win_seg = np.array(tseg[(slice(None), *wsl)], dtype=np.int16)
        win = ctx.preprocessor._normalize(win, win_seg, ctx.cm, ctx.pm.foreground_intensity_properties_per_channel)
        nz = src.nonzero[tuple(slice(int(x), int(y)) for x, y in zip(p, q))]
        win_seg[(win_seg == 0) & ~nz[None]] = -1
        out_data, out_seg = _resample_window(ctx, src, win, win_seg, p, a, b, factors)
        return {"method": method, "data": out_data, "seg": out_seg, "start": a,
                "class_locations": _locations(ctx, out_seg, a, seed)}
    # exact: nnU-Net preprocesses the whole composed case; keep where it differs from the source
    pre_data, pre_seg, props = _preprocess(ctx, data, seg, ctx_props(src))
    if pre_data.shape != src.pre_data.shape:
        raise _OwnSource(pre_data, pre_seg, props)
    changed = (pre_data != src.pre_data).any(0) | (pre_seg != src.pre_seg)[0]
    box = _bbox(changed)
    if box is None:
        box = np.array([[0, 1]] * 3, dtype=np.int64)
    sl = (slice(None), *(slice(int(x), int(y)) for x, y in box))
    seg_patch = pre_seg[sl].astype(np.int16)
    return {"method": "exact", "data": pre_data[sl].astype(np.float32), "seg": seg_patch,
            "start": box[:, 0], "class_locations": _locations(ctx, seg_patch, box[:, 0], seed)}


class _OwnSource(Exception):
    """The composed case crops differently from its source: it is prepared as a source of its own."""

    def __init__(self, data: np.ndarray, seg: np.ndarray, props: dict) -> None:
        super().__init__("own source")
        self.data, self.seg, self.props = data, seg, props


def ctx_props(src: _Source) -> dict:
    """The reader's properties of the source (spacing etc.), which the composed case shares."""
    keep = ("spacing", "sitk_stuff", "nibabel_stuff")
    return {k: v for k, v in src.props.items() if k in keep}


def _separate_z(ctx: _Context, src: _Source) -> bool:
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    kwargs = ctx.cm.configuration.get("resampling_fn_data_kwargs", {})
    spacing = [src.props["spacing"][i] for i in ctx.tf]
    do_sep, _ = determine_do_sep_z_and_axis(kwargs.get("force_separate_z"), spacing, ctx.cm.spacing)
    return bool(do_sep)


def _dropped_rows(source_locations: dict, keys: list, start: np.ndarray, stop: np.ndarray) -> dict[str, list[int]]:
    """Rows of the source's class locations that fall inside the patch (the composed case drops them)."""
    out = {}
    for k, locs in source_locations.items():
        locs = np.asarray(locs, dtype=np.int64).reshape(-1, 4)
        rows = np.flatnonzero(np.all((locs[:, 1:] >= start) & (locs[:, 1:] < stop), axis=1))
        if len(rows):
            out[json.dumps(list(k) if isinstance(k, tuple) else int(k))] = rows.tolist()
    return out


def save_case_patch(path: Path, patch: dict[str, Any], source_locations: dict) -> dict[str, Any]:
    """Write the patch as one raw file (data float32, seg int16, own class locations int32 rows [key index, c,
    z, y, x]: one read, no archive to parse at load time); returns what the record keeps about it (shapes,
    start, location keys, the source's location rows the patch covers)."""
    keys = list(patch["class_locations"].keys())
    rows = [np.concatenate([np.full((len(v), 1), i, np.int64), np.asarray(v, np.int64).reshape(-1, 4)], axis=1)
            for i, v in enumerate(patch["class_locations"].values())]
    locs = (np.concatenate(rows) if rows else np.zeros((0, 5), np.int64)).astype(np.int32)
    data = np.ascontiguousarray(patch["data"], dtype=np.float32)
    seg = np.ascontiguousarray(patch["seg"], dtype=np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.tobytes() + seg.tobytes() + locs.tobytes())
    os.replace(tmp, path)
    start = np.asarray(patch["start"], dtype=np.int64)
    return {"start": start.tolist(), "shape": list(data.shape), "n_locs": int(len(locs)),
            "loc_keys": [list(k) if isinstance(k, tuple) else int(k) for k in keys],
            "drop": _dropped_rows(source_locations, keys, start, start + np.asarray(seg.shape[1:]))}


def _check_values(label: np.ndarray, allowed: set[int] | None, what: str, name: str) -> None:
    if allowed is None:
        return
    bad = sorted(set(np.unique(label).tolist()) - set(allowed))
    if bad:
        raise InputError(f"{what}: label values {bad} are not labels of {name} (allowed {sorted(allowed)})")


def prepare_patch_cases(bank: Path, cases: list, *, name: str, plans: dict, configuration: str,
                        dataset_json: dict, mapping: Any, preprocessed_root: Path, prep_sha: str,
                        manifest_hash: str, progress: bool = False, extra: dict[str, Any] | None = None,
                        allowed: set[int] | None = None) -> tuple[Path, list[str], list[str]]:
    """Prepare every case of a patches bank (and the full-stored ones, as sources of their own) into
    `<preprocessed_root>/<name>/<data_identifier>_ldbank_<bank_id>/`. Returns (folder, prepared, skipped)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    out = patch_prepared_folder(preprocessed_root, name, cm.data_identifier, bank)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / RECORD
    old = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if old.get("preprocessing_sha256") != prep_sha or old.get("format") != PATCH_PREPARED_FORMAT:
        old = {}
    ctx = _Context(pm, cm, dataset_json, out)
    bases = patch_store.BaseLabels(bank)
    cases_out: dict[str, Any] = {}
    sources_out: dict[str, Any] = dict(old.get("sources", {}))
    prepared, skipped = [], []
    groups: dict[tuple, list] = {}
    for case in cases:
        e = case.extra
        lut = tuple(sorted(mapping.lut_for(e.get("organ"), e.get("lesion_type")).items()))
        st = e.get("storage") or {}
        key_src = (st.get("source", {}).get("sha256"), st.get("base_label")) if st.get("mode") == "patches" else \
            ("own", case.case_id)
        groups.setdefault((key_src, lut), []).append(case)
    with tempfile.TemporaryDirectory(prefix=".ldbank_", dir=out) as tmpdir:
        tmp = Path(tmpdir)
        items = list(groups.items())
        if progress and len(cases) > 1:
            from tqdm import tqdm

            bar = tqdm(total=len(cases), desc="prepare (patches)", unit="case", dynamic_ncols=True)
        else:
            bar = None
        for (key_src, lut), members in items:
            lut_map = dict(lut)
            key = "src_" + sha256_json([list(key_src), [list(p) for p in lut]])[:16]
            wanted = {e.case_id: {"source": key, "patch_sha256": (e.extra.get("storage") or {}).get("patch_sha256"),
                                  "files": e.extra.get("files")} for e in members}
            if key in sources_out and all(old.get("cases", {}).get(c, {}).get("input") == w
                                          and (out / PATCHES / f"{c}{PATCH_SUFFIX}").is_file() for c, w in wanted.items()) \
                    and (out / SOURCES / f"{key}.pkl").is_file():
                for c in wanted:
                    cases_out[c] = old["cases"][c]
                    skipped.append(c)
                if bar:
                    bar.update(len(members))
                continue
            if key_src[0] == "own":   # a case stored in full: prepared as a source with no patch
                case = members[0]
                ct_path = bank / "imagesTr" / f"{case.case_id}_0000.nii.gz"
                label = np.asarray(nib.load(str(bank / "labelsTr" / f"{case.case_id}.nii.gz")).dataobj)
                label = remap(label, lut_map, file=case.case_id)
                _check_values(label, allowed, f"{bank / 'labelsTr'} case {case.case_id}", name)
                load_source(ctx, key, ct_path, label, tmp)
                sources_out[key] = {"source": str(ct_path), "own_case": case.case_id}
                cases_out[case.case_id] = {"source": key, "method": "full", "input": wanted[case.case_id]}
                (out / PATCHES / f"{case.case_id}{PATCH_SUFFIX}").unlink(missing_ok=True)
                prepared.append(case.case_id)
                if bar:
                    bar.update(1)
                continue
            first = members[0].extra["storage"]
            ct_path = Path(first["source"]["path"])
            base = remap(bases.load(first["base_label"]), lut_map, file=first["base_label"])
            _check_values(base, allowed, f"{bank / 'bases' / first['base_label']}", name)
            src = load_source(ctx, key, ct_path, base, tmp)
            sources_out[key] = {"source": str(ct_path), "source_sha256": first["source"]["sha256"],
                                "base_label": first["base_label"], "label_map": [list(p) for p in lut]}
            for i, case in enumerate(members):
                ct_raw, label, patch = patch_store.composed_arrays(bank, case.extra, bases)
                label = remap(label, lut_map, file=case.case_id)
                _check_values(label[patch.slices], allowed, f"{bank / case.extra['storage']['patch']}", name)
                target = out / PATCHES / f"{case.case_id}{PATCH_SUFFIX}"
                try:
                    pp = case_patch(ctx, src, ct_raw, label, patch.box, (patch.ct_header, patch.label_header),
                                    tmp, seed=1234)
                except _OwnSource as own:
                    own_key = f"{key}_{case.case_id}"
                    _save_source(ctx, own_key, own.data, own.seg, own.props)
                    sources_out[own_key] = {"source": str(ct_path), "own_case": case.case_id}
                    cases_out[case.case_id] = {"source": own_key, "method": "full", "input": wanted[case.case_id]}
                    target.unlink(missing_ok=True)
                else:
                    where = save_case_patch(target, pp, src.props["class_locations"])
                    cases_out[case.case_id] = {"source": key, "method": pp["method"], **where,
                                               "input": wanted[case.case_id]}
                prepared.append(case.case_id)
                if bar:
                    bar.update(1)
            del src
        if bar:
            bar.close()
    record = {"format": PATCH_PREPARED_FORMAT, "bank": str(bank), "bank_id": bank_id(bank), "target_dataset": name,
              "configuration": configuration, "data_identifier": cm.data_identifier,
              "preprocessing_sha256": prep_sha, "manifest_sha256": manifest_hash,
              "label_mapping": mapping.describe(), "cases": cases_out,
              "sources": {k: v for k, v in sources_out.items() if any(c["source"] == k for c in cases_out.values())},
              "prepared_at": time.time(), **(extra or {})}
    record["data_sha256"] = sha256_json({c: v["input"] for c, v in cases_out.items()})
    atomic_write_json(record_path, record)
    return out, prepared, skipped
