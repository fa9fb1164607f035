"""`synthesis-bank prepare`: preprocess a bank with a target dataset's nnU-Net plans.

The trainer mixes bank cases into the same batches as the target's own cases, so the bank must be
preprocessed exactly like them: same plans, configuration and data identifier, the target's intensity
normalization and reader, nnU-Net's own preprocessor class (`run_case_save`) and therefore its file format.
The result lives inside the bank (see `synthesis_bank.nnunet_io` for the layout), so one bank can be
prepared for several targets. nnU-Net is imported lazily: mounting the CLI must stay cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ld_augment.errors import ConfigError, InputError, LdAugmentError
from ld_augment.io.atomic import atomic_write_json
from ld_augment.io.nifti import sha256_file
from synthesis_bank.bank_folder import MARKER, clean_scratch
from synthesis_bank.label_mapping import (OrganFill, TargetLabels, parse_label_args, remap, required_fills,
                                          resolve_mapping)
from synthesis_bank.lock import bank_lock
from synthesis_bank.nnunet_io import (PREPARED_DIRNAME, PREPARED_FORMAT, PREPARED_JSON, load_prepared,
                                      manifest_sha256, prepared_data_folder, prepared_root, preprocessing_sha256,
                                      read_bank_cases, record_key, sha256_json)
from synthesis_bank.patch_io import is_patch_bank


@dataclass(frozen=True)
class PrepareResult:
    target_dataset: str
    data_identifier: str
    output_folder: Path
    prepared: list[str]   # cases preprocessed by this call
    skipped: list[str]    # cases already prepared by an earlier call


def merge_label_args(labels: Sequence[str] | dict[str, str] | None,
                     lesion_map: Sequence[str] | dict[str, str] | None) -> dict[str, str]:
    """`--labels` and `--lesion-map` entries as one {bank name: target name} dict; a key given in both with
    different targets is an error."""
    out = dict(labels) if isinstance(labels, dict) else parse_label_args(labels)
    extra = dict(lesion_map) if isinstance(lesion_map, dict) else parse_label_args(lesion_map, origin="--lesion-map")
    for key, value in extra.items():
        if key in out and out[key] != value:
            raise ConfigError(f"{key!r} is mapped to {out[key]!r} by --labels and to {value!r} by --lesion-map")
        out[key] = value
    return out


def _inputs_signature(files: Sequence[Path]) -> list[list[int]]:
    """(size, mtime) of a case's inputs: a rebuilt bank case is prepared again (cheap; no hashing of CTs)."""
    return [[f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _case_done(out_dir: Path, case_id: str, entry: dict | None, wanted: dict) -> bool:
    """Done when its files exist and the record says it was made from these inputs with these settings."""
    if entry != wanted or not (out_dir / f"{case_id}.pkl").is_file():
        return False
    return any((out_dir / f"{case_id}{ext}").is_file() for ext in (".b2nd", ".npz"))


def _prepare_one(job: tuple) -> tuple[str, list[int]]:
    """Worker: map the labels into the target's space, preprocess one case into its own staging folder, check
    labels, move it in (properties file last)."""
    case_id, image, label, lut, staging, out_dir, plans, configuration, dataset_json, fill = job
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    stage = Path(staging) / case_id
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    if any(k != v for k, v in lut) or fill:
        label = _remapped_label(Path(label), dict(lut), stage / f"label_{case_id}{_ending(Path(label))}", fill)
    preprocessor = cm.preprocessor_class(verbose=False)
    preprocessor.run_case_save(str(stage / case_id), [str(image)], str(label), pm, cm, dataset_json)
    values = _seg_values(stage, case_id)
    files = sorted((f for f in stage.iterdir() if f.name.startswith(case_id + ".") or
                    f.name.startswith(case_id + "_seg.")), key=lambda p: p.suffix == ".pkl")
    for f in files:
        os.replace(f, Path(out_dir) / f.name)
    shutil.rmtree(stage, ignore_errors=True)
    return case_id, values


def _ending(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def _remapped_label(label: Path, lut: dict[int, int], out: Path, fill: tuple | None = None) -> Path:
    """The bank label map in the target's label values, same grid and header (a staging copy; the bank's own
    file is never modified); `fill` = (organ map, [(organ, value), ...]) adds the target classes the bank case
    does not label itself, on background voxels only."""
    import nibabel as nib
    import numpy as np

    img = nib.load(str(label))
    mapped = remap(np.asarray(img.dataobj), lut, file=str(label))
    if fill:
        mapped = _fill_organs(mapped, Path(fill[0]), fill[1], label=label)
    new = nib.Nifti1Image(mapped, img.affine, img.header)
    new.set_data_dtype(mapped.dtype)
    nib.save(new, str(out))
    return out


def _fill_organs(mapped, organ_map: Path, fills, *, label: Path):
    import nibabel as nib
    import numpy as np

    from ld_augment.organs.masks import detect_label_version
    from ld_augment.organs.registry import organ_label_ids

    organs = np.asarray(nib.load(str(organ_map)).dataobj)
    if organs.shape[:3] != mapped.shape[:3]:
        raise InputError(f"{organ_map}: organ map shape {organs.shape} differs from the bank label {label} "
                         f"({mapped.shape}); it must be the segmentation of the case's source CT")
    version = detect_label_version(organs)
    out = mapped.copy()
    for organ, value in fills:
        ids = organ_label_ids(organ, version)
        out[np.isin(organs, ids) & (out == 0)] = value
    return out


def _organ_map_for(case, organ_maps: Path | None, ending: str) -> Path | None:
    """The organ map (TotalSegmentator ids) of a bank case's source: `--organ-maps DIR/<source id or case id>`,
    else the segmentation the bank was built with (manifest `source_seg`), if it still exists."""
    if organ_maps is not None:
        for key in (case.source_id, case.case_id):
            if key and (organ_maps / f"{key}{ending}").is_file():
                return organ_maps / f"{key}{ending}"
    recorded = case.extra.get("source_seg")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    return None


def case_label_plan(case, mapping, organ_maps: Path | None, ending: str) -> tuple[list, tuple | None] | str:
    """How a bank case's label becomes the target's: (sorted bank->target lut pairs, organ fill or None), or the
    reason the case is refused for this target (a skipped lesion type, target classes nothing can supply)."""
    organ, lesion_type = case.extra.get("organ"), case.extra.get("lesion_type")
    skip = mapping.skipped(organ, lesion_type)
    if skip:
        return skip
    lut = sorted(mapping.lut_for(organ, lesion_type).items())
    fills = required_fills(mapping.target, organ, mapping.per_pair[(organ, lesion_type)])
    if not fills:
        return lut, None
    organ_map = _organ_map_for(case, organ_maps, ending)
    if organ_map is None:
        return _refusal(case, organ, fills)
    return lut, (str(organ_map), [(f.organ, f.value) for f in fills])


def _patch_cases_for_target(bank: Path, name: str, cases: list, mapping, organ_maps, ending: str) -> list:
    """The cases of a `storage: patches` bank whose labels can be written in the target's: a skipped lesion type
    or a target class nothing can supply refuses the case as for a full bank. Filling target organ classes from
    an organ map is done for full banks only (a patch case keeps its source's base label outside the patch)."""
    maps_dir = Path(organ_maps).resolve() if organ_maps is not None else None
    usable, refused = [], {}
    for case in cases:
        plan = case_label_plan(case, mapping, maps_dir, ending)
        if isinstance(plan, str):
            refused[case.case_id] = plan
        elif plan[1] is not None:
            refused[case.case_id] = (f"the target labels organ classes bank case {case.case_id} does not label "
                                     f"({', '.join(o for o, _ in plan[1][1])}); a storage: patches bank cannot "
                                     f"fill them yet: build it with storage: full (or materialize it and use "
                                     f"scripts/expand_dataset.py)")
        else:
            usable.append(case)
    if refused:
        first = next(iter(refused.items()))
        print(f"prepare: {len(refused)} bank case(s) refused for {name}: their labels would contradict the "
              f"target's (e.g. {first[0]}: {first[1]})", flush=True)
    if not usable:
        raise InputError(f"{bank / 'manifest.jsonl'}: every bank case was refused for {name}, e.g. "
                         f"{next(iter(refused.values()))}")
    return usable


def write_target_label(label: Path, lut: Sequence, fill: tuple | None, out: Path) -> Path:
    """The bank label in the target's values (plus organ fill) at `out`, or a plain copy when nothing changes."""
    if not fill and all(k == v for k, v in lut):
        shutil.copy2(label, out)
        return out
    return _remapped_label(label, dict(lut), out, fill)


def _refusal(case, organ: str | None, fills: list[OrganFill]) -> str:
    classes = ", ".join(f"{f.target!r} ({f.organ})" for f in fills)
    return (f"the target labels {classes} but bank case {case.case_id} labels only {organ!r}, and no organ map "
            f"of its source {case.source_id!r} is known: pass --organ-maps DIR (TotalSegmentator segmentations "
            f"named <source id>.nii.gz) or build the bank with segmentations")


def _seg_values(stage: Path, case_id: str) -> list[int]:
    import numpy as np

    seg_b2nd = stage / f"{case_id}_seg.b2nd"
    if seg_b2nd.is_file():
        import blosc2

        seg = blosc2.open(urlpath=str(seg_b2nd), mode="r")[...]
    else:
        seg = np.load(stage / f"{case_id}.npz")["seg"]
    return [int(v) for v in np.unique(seg)]


def _resolve_target(target_dataset: str | int, plans_identifier: str, configuration: str):
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if not nnUNet_preprocessed.is_set():
        raise ConfigError("nnUNet_preprocessed is not set: prepare needs the target dataset's plans "
                          "(export nnUNet_preprocessed=... as for nnUNetv2_train)")
    try:
        name = maybe_convert_to_dataset_name(target_dataset)
    except RuntimeError as exc:
        raise ConfigError(f"target dataset {target_dataset!r} not found: {exc}") from exc
    base = Path(nnUNet_preprocessed.get()) / name
    plans_file = base / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise ConfigError(f"{plans_file} not found: plan the target first "
                          f"(nnUNetv2_plan_and_preprocess -d {target_dataset} -c {configuration})")
    plans = json.loads(plans_file.read_text())
    pm = PlansManager(plans)
    if configuration not in pm.available_configurations:
        raise ConfigError(f"configuration {configuration!r} is not in {plans_file}; "
                          f"choose one of {pm.available_configurations}")
    dataset_json = json.loads((base / "dataset.json").read_text())
    return name, plans, pm, dataset_json


def _check_channels(target_json: dict, bank_json: dict, *, target_file: str, bank_file: str) -> None:
    """A CT bank trains only single-channel CT targets: nnU-Net normalizes by channel name."""
    channels = target_json.get("channel_names", target_json.get("modality", {}))
    names = [str(v) for v in channels.values()]
    if len(names) != 1 or names[0].strip().upper() != "CT":
        raise InputError(f"{target_file}: channel_names {channels} — a CT bank ({bank_file}) can only train a "
                         f"target with one channel named CT (nnU-Net's CT normalization)")
    bank_channels = bank_json.get("channel_names", {"0": "CT"})
    if len(bank_channels) != 1:
        raise InputError(f"{bank_file}: the bank has channel_names {bank_channels}, a CT bank has one channel")


def _hash_target_images(name: str, ending: str, cached: dict, progress: bool) -> dict[str, dict]:
    """sha256 of the target's raw imagesTr/imagesTs (channel 0), reusing hashes of unchanged files.

    The leakage guard compares bank sources to these by content; {} when nnUNet_raw does not hold the target.
    """
    from nnunetv2.paths import nnUNet_raw

    if not nnUNet_raw.is_set():
        return {}
    root = Path(nnUNet_raw.get()) / name
    out: dict[str, dict] = {}
    for folder in ("imagesTr", "imagesTs"):
        files = sorted((root / folder).glob(f"*_0000{ending}")) if (root / folder).is_dir() else []
        table: dict[str, dict] = {}
        old = cached.get(folder, {})
        for f in _bar(files, f"hash {folder}", progress):
            case_id = f.name[: -len(f"_0000{ending}")]
            st = f.stat()
            prev = old.get(case_id)
            if prev and prev.get("size") == st.st_size and prev.get("mtime_ns") == st.st_mtime_ns:
                table[case_id] = prev
            else:
                table[case_id] = {"sha256": sha256_file(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        out[folder] = table
    return out


def _bar(items, desc: str, progress: bool, total: int | None = None):
    """A per-case progress bar over `items` (a sequence, or an iterator with its `total`); none for 0-1 cases."""
    total = len(items) if total is None else total
    if not progress or total < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="case", dynamic_ncols=True)


def _test_sources(cases, target_images: dict, near: dict | None = None) -> list[str]:
    """Bank cases made from one of the target's test images (imagesTs): by verbatim id, by file hash or by
    content (a near-duplicate image, `synthesis_bank.near_duplicates`)."""
    test = target_images.get("imagesTs", {})
    shas = {v["sha256"] for v in test.values()}
    near = near or {}
    return [c.case_id for c in cases if c.source_id in test or (c.source_sha256 and c.source_sha256 in shas)
            or any(k in test for k in near.get(c.case_id, {}))]


def _near_duplicate_table(bank: Path, name: str, cases, target_images: dict, target_ending: str,
                          bank_ending: str, progress: bool) -> dict:
    """{"threshold", "measure", "imagesTr": {bank case: {target case: r}}, "imagesTs": {...}}: bank cases whose
    image (or, where the bank keeps none, its source file) is a near-duplicate of a target image. Fingerprints
    are cached beside prepared.json and recomputed only for changed files."""
    from nnunetv2.paths import nnUNet_raw

    from synthesis_bank import near_duplicates as nd

    table: dict = {"threshold": nd.THRESHOLD, "measure": "Pearson r of 24^3 block-averaged, z-scored CT "
                   "fingerprints", "imagesTr": {}, "imagesTs": {}}
    if not nnUNet_raw.is_set() or not target_images:
        return table
    cache_file = prepared_root(bank, name) / "fingerprints.npz"
    cache = nd.load_cache(cache_file)
    bank_files = {}
    for c in cases:
        own = bank / "imagesTr" / f"{c.case_id}_0000{bank_ending}"
        src = Path(c.source_file) if c.source_file else None
        if own.is_file():
            bank_files[f"bank/{c.case_id}"] = own
        elif src is not None and src.is_file():
            bank_files[f"bank/{c.case_id}"] = src
    bank_fp = nd.fingerprints(bank_files, cache, _bar(list(bank_files), "fingerprint bank", progress))
    bank_fp = {k[len("bank/"):]: v for k, v in bank_fp.items()}
    root = Path(nnUNet_raw.get()) / name
    for folder in ("imagesTr", "imagesTs"):
        files = {f"{folder}/{k}": root / folder / f"{k}_0000{target_ending}" for k in target_images.get(folder, {})}
        files = {k: f for k, f in files.items() if f.is_file()}
        fp = nd.fingerprints(files, cache, _bar(list(files), f"fingerprint {folder}", progress))
        table[folder] = nd.near_duplicates(bank_fp, {k.split("/", 1)[1]: v for k, v in fp.items()})
    keep = {f"bank/{c.case_id}" for c in cases} | {f"{f}/{k}" for f in ("imagesTr", "imagesTs")
                                                   for k in target_images.get(f, {})}
    nd.save_cache(cache_file, {k: v for k, v in cache.items() if k in keep})
    return table


def _disk_estimate(jobs: list[tuple], spacing: Sequence[float], transpose: Sequence[int]) -> int:
    """Upper bound of the bytes the jobs write: float32 data + int16 seg per voxel at the target spacing
    (blosc2 usually compresses this to well under half)."""
    import nibabel as nib

    total = 0
    for job in jobs:
        img = nib.load(str(job[1]))
        zooms = img.header.get_zooms()[:3]
        # nnU-Net's SimpleITK reader returns axes reversed (z, y, x) before transpose_forward
        shape_zyx = list(img.shape[:3])[::-1]
        spacing_zyx = list(zooms)[::-1]
        shape_t = [shape_zyx[i] for i in transpose]
        spacing_t = [spacing_zyx[i] for i in transpose]
        sp = list(spacing) if len(spacing) == 3 else [spacing_t[0], *spacing]
        voxels = 1
        for n, s_old, s_new in zip(shape_t, spacing_t, sp):
            voxels *= max(1, round(n * s_old / s_new))
        total += voxels * 6
    return total


def prepare_bank(bank_dir: str | os.PathLike, target_dataset: str | int, *, configuration: str = "3d_fullres",
                 plans_identifier: str = "nnUNetPlans", num_processes: int | None = None,
                 labels: Sequence[str] | dict[str, str] | None = None, allow_test_sources: bool = False,
                 progress: bool = True, lesion_map: Sequence[str] | dict[str, str] | None = None,
                 organ_maps: str | os.PathLike | None = None) -> PrepareResult:
    """Preprocess every finished bank case with the target's plans, its labels mapped into the target's labels.

    A case is prepared again when its inputs, the label mapping or the plans fields that affect preprocessing
    changed (re-planning with another spacing re-prepares; a new batch size does not). Writes
    `<bank>/nnUNet_preprocessed/<DatasetName>/<data_identifier>/` and `prepared.json` beside it (see
    `synthesis_bank.nnunet_io`), which the trainer checks. Bank cases made from the target's test images are
    refused unless `allow_test_sources`. Every organ class of the target must be labelled in a bank case: what
    the case does not label itself comes from an organ map (`organ_maps` folder or the segmentation recorded in
    the manifest), else the case is refused for this target (listed with its reason in the record).
    """
    bank = Path(bank_dir).resolve()
    _check_bank(bank)  # before locking: the lock must not be taken on (or create) a folder that is no bank
    with bank_lock(bank, job="synthesis-bank prepare", check=lambda: _check_bank(bank)):
        _clean_scratch(bank)
        return _prepare(bank, target_dataset, configuration=configuration, plans_identifier=plans_identifier,
                        num_processes=num_processes, labels=labels, allow_test_sources=allow_test_sources,
                        progress=progress, lesion_map=lesion_map, organ_maps=organ_maps)


def _check_bank(bank: Path) -> None:
    if (bank / "dataset.json").is_file():
        return
    if (bank / MARKER).is_file():
        raise InputError(f"{bank / 'dataset.json'}: not found; the bank {bank} has no finished case yet "
                         "(dataset.json appears with the first one): build or --resume it first")
    raise InputError(f"{bank / 'dataset.json'}: not found; {bank} is not a bank folder (synthesis-bank build)")


def _clean_scratch(bank: Path) -> None:
    """What killed jobs left (under the exclusive lock, so nobody is using it): temp files of the bank's and
    each prepared target's JSON files, and the targets' staging folders."""
    clean_scratch(bank)
    root = bank / PREPARED_DIRNAME
    for target in (root.iterdir() if root.is_dir() else []):
        if target.is_dir():
            clean_scratch(target)
            for staging in target.glob(".staging_*"):
                shutil.rmtree(staging, ignore_errors=True)


def _prepare(bank: Path, target_dataset: str | int, *, configuration: str, plans_identifier: str,
             num_processes: int | None, labels: Sequence[str] | dict[str, str] | None, allow_test_sources: bool,
             progress: bool, lesion_map: Sequence[str] | dict[str, str] | None,
             organ_maps: str | os.PathLike | None) -> PrepareResult:
    bank_json_file = bank / "dataset.json"
    bank_json = json.loads(bank_json_file.read_text())
    name, plans, pm, target_json = _resolve_target(target_dataset, plans_identifier, configuration)
    target_file = f"{name}/dataset.json"
    cm = pm.get_configuration(configuration)
    _check_channels(target_json, bank_json, target_file=target_file, bank_file=str(bank_json_file))
    ending = bank_json.get("file_ending", ".nii.gz")
    reader = pm.image_reader_writer_class
    if ending not in getattr(reader, "supported_file_endings", [ending]):
        raise InputError(f"the target's reader {reader.__name__} cannot read the bank's {ending} files")

    manifest_hash = manifest_sha256(bank)
    cases = read_bank_cases(bank)
    explicit = merge_label_args(labels, lesion_map)
    mapping = resolve_mapping(bank_json.get("labels", {}), target_json["labels"],
                              [(c.extra.get("organ"), c.extra.get("lesion_type")) for c in cases], explicit,
                              bank_file=str(bank_json_file), target_file=target_file)
    doc = load_prepared(bank, name) or {"format": PREPARED_FORMAT, "target_dataset": name, "records": {},
                                        "data": {}, "target_images": {}}
    target_images = _hash_target_images(name, target_json.get("file_ending", ".nii.gz"),
                                        doc.get("target_images", {}), progress)
    doc["target_images"] = target_images
    near = _near_duplicate_table(bank, name, cases, target_images, target_json.get("file_ending", ".nii.gz"),
                                 ending, progress)
    doc["near_duplicates"] = near
    from_test = _test_sources(cases, target_images, near["imagesTs"])
    if from_test and not allow_test_sources:
        from synthesis_bank.near_duplicates import describe

        measured = [f"{c} ~ {describe(near['imagesTs'][c])}" for c in from_test[:3] if c in near["imagesTs"]]
        raise InputError(f"{bank / 'manifest.jsonl'}: {len(from_test)} bank case(s) were made from {name}'s test "
                         f"images (imagesTs), e.g. {from_test[:3]}"
                         + (f" (near-duplicate content, threshold r>={near['threshold']}: {'; '.join(measured)})"
                            if measured else "")
                         + "; training on them leaks the test set. Rebuild the bank without them, or pass "
                           "--allow-test-sources to prepare them anyway")

    prep_sha = preprocessing_sha256(plans, cm.configuration, target_json)
    if is_patch_bank(cases):   # sources once + preprocessed patches, under nnUNet_preprocessed (prepare_patches)
        from nnunetv2.paths import nnUNet_preprocessed
        from synthesis_bank.prepare_patches import prepare_patch_cases

        cases = _patch_cases_for_target(bank, name, cases, mapping, organ_maps, ending)
        folder, done, skipped = prepare_patch_cases(
            bank, cases, name=name, plans=plans, configuration=configuration, dataset_json=target_json,
            mapping=mapping, preprocessed_root=Path(nnUNet_preprocessed.get()), prep_sha=prep_sha,
            manifest_hash=manifest_hash, progress=progress,
            extra={"plans_identifier": plans_identifier, "target_images": target_images,
                   "test_sources_allowed": from_test, "nnunetv2_version": _nnunet_version(),
                   "near_duplicates": near},
            allowed=TargetLabels(target_json["labels"]).written_values() | {0})
        return PrepareResult(name, cm.data_identifier, folder, done, skipped)
    out_dir = prepared_data_folder(bank, name, cm.data_identifier)
    staging = prepared_root(bank, name) / f".staging_{cm.data_identifier}"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = doc["data"].setdefault(cm.data_identifier, {})
    jobs, skipped, wanted, refused = [], [], {}, {}
    maps_dir = Path(organ_maps).resolve() if organ_maps is not None else None
    if maps_dir is not None and not maps_dir.is_dir():
        raise InputError(f"--organ-maps {organ_maps}: no such folder")
    for case in cases:
        image = bank / "imagesTr" / f"{case.case_id}_0000{ending}"
        label = bank / "labelsTr" / f"{case.case_id}{ending}"
        for f in (image, label):
            if not f.is_file():
                raise InputError(f"{f}: missing, but {bank / 'manifest.jsonl'} lists case {case.case_id} as ok")
        plan = case_label_plan(case, mapping, maps_dir, ending)
        if isinstance(plan, str):
            refused[case.case_id] = plan
            continue
        lut, fill = plan
        wanted[case.case_id] = {"preprocessing_sha256": prep_sha, "label_map": [list(p) for p in lut],
                                "inputs": _inputs_signature((image, label) + ((Path(fill[0]),) if fill else ()))}
        if fill:
            wanted[case.case_id]["organ_fill"] = [list(x) for x in fill[1]]
        if _case_done(out_dir, case.case_id, table.get(case.case_id), wanted[case.case_id]):
            skipped.append(case.case_id)
        else:
            jobs.append((case.case_id, image, label, lut, str(staging), str(out_dir), plans, configuration,
                         target_json, fill))
    if refused:
        first = next(iter(refused.items()))
        print(f"prepare: {len(refused)} bank case(s) refused for {name}: their labels would contradict the "
              f"target's (e.g. {first[0]}: {first[1]})", flush=True)
    cases = [c for c in cases if c.case_id not in refused]
    if not cases:
        raise InputError(f"{bank / 'manifest.jsonl'}: every bank case was refused for {name}, e.g. "
                         f"{next(iter(refused.values()))}")
    if jobs:
        estimate = _disk_estimate(jobs, cm.spacing, pm.transpose_forward)
        free = shutil.disk_usage(out_dir).free
        print(f"prepare: {len(jobs)} case(s) to preprocess for {name} {configuration}, up to "
              f"{estimate / 1e9:.2f} GB uncompressed ({free / 1e9:.1f} GB free in {out_dir})", flush=True)

    for job in jobs:   # their files are about to be replaced: no record may vouch for them meanwhile
        table.pop(job[0], None)
    _write_doc(bank, name, doc)
    allowed = TargetLabels(target_json["labels"]).written_values() | {0, -1}
    done: list[str] = []
    last_write = time.monotonic()
    for case_id, values in _bar(_run_jobs(jobs, num_processes), "prepare", progress, total=len(jobs)):
        bad = sorted(set(values) - allowed)
        if bad:
            for f in [*out_dir.glob(f"{case_id}.*"), *out_dir.glob(f"{case_id}_seg.*")]:
                f.unlink()
            _write_doc(bank, name, doc)
            raise InputError(f"{bank / 'labelsTr' / (case_id + ending)}: label values {bad} are not labels of "
                             f"{name} ({target_json['labels']})")
        table[case_id] = wanted[case_id]
        done.append(case_id)
        if time.monotonic() - last_write > 10:      # an interrupted prepare keeps what it finished
            _write_doc(bank, name, doc)
            last_write = time.monotonic()
    shutil.rmtree(staging, ignore_errors=True)
    doc["records"][record_key(plans_identifier, configuration)] = {
        "configuration": configuration,
        "plans_identifier": plans_identifier,
        "data_identifier": cm.data_identifier,
        "preprocessing_sha256": prep_sha,
        "plans_sha256": sha256_json(plans),
        "manifest_sha256": manifest_hash,
        "label_mapping": mapping.describe(),
        "cases": [c.case_id for c in cases],
        "data_sha256": sha256_json({c.case_id: wanted[c.case_id] for c in cases}),
        "test_sources_allowed": [c for c in from_test if c not in refused],
        "refused": refused,
        "nnunetv2_version": _nnunet_version(),
    }
    _write_doc(bank, name, doc)
    return PrepareResult(name, cm.data_identifier, out_dir, done, skipped)


def _run_jobs(jobs: list[tuple], num_processes: int | None):
    if num_processes is None:
        num_processes = int(os.environ.get("nnUNet_def_n_proc", "4"))
    if num_processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _prepare_one(job)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
        yield from pool.imap_unordered(_prepare_one, jobs)


def _nnunet_version() -> str:
    from importlib.metadata import version

    return version("nnunetv2")


def _write_doc(bank: Path, name: str, doc: dict) -> None:
    atomic_write_json(prepared_root(bank, name) / PREPARED_JSON, doc)


# --- CLI: mounted by synthesis_bank.cli as `synthesis-bank prepare` -------------------------------------------

def add_prepare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `prepare` to a subparsers object; the parsed namespace's `func(args)` runs it and returns 0."""
    p = subparsers.add_parser("prepare", help="preprocess a bank with a target dataset's nnU-Net plans",
                              description=prepare_bank.__doc__)
    _add_arguments(p)
    p.set_defaults(func=run_prepare_args)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bank", required=True, help="bank folder (synthesis-bank build --out)")
    p.add_argument("--target", required=True, help="target nnU-Net dataset id or name (e.g. 3 or Dataset003_Liver)")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", dest="plans_identifier", default="nnUNetPlans")
    p.add_argument("-np", "--num-processes", dest="num_processes", type=int, default=None)
    p.add_argument("--labels", nargs="+", default=None, metavar="BANK=TARGET",
                   help="map bank labels to the target's where names do not say it: organ=liver lesion=cancer, "
                        "organ=drop, or per lesion type \"renal cell carcinoma=tumor\" (default: by name)")
    p.add_argument("--lesion-map", nargs="+", default=None, metavar="TYPE=TARGET",
                   help="where each bank lesion type goes in the target, e.g. cyst=masses \"renal cell "
                        "carcinoma=tumor\" (malignant types go to a single tumour label by themselves; benign ones "
                        "need this)")
    p.add_argument("--organ-maps", default=None, metavar="DIR",
                   help="TotalSegmentator segmentations of the bank's sources (<source id>.nii.gz), for target "
                        "classes a bank case does not label itself (e.g. the other kidney)")
    p.add_argument("--allow-test-sources", action="store_true",
                   help="prepare bank cases made from the target's imagesTs anyway (recorded)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run_prepare_args(args: argparse.Namespace) -> int:
    result = prepare_bank(args.bank, args.target, configuration=args.configuration,
                          plans_identifier=args.plans_identifier, num_processes=args.num_processes,
                          labels=getattr(args, "labels", None),
                          allow_test_sources=getattr(args, "allow_test_sources", False),
                          progress=getattr(args, "progress", True), lesion_map=getattr(args, "lesion_map", None),
                          organ_maps=getattr(args, "organ_maps", None))
    print(f"prepared {len(result.prepared)} case(s), skipped {len(result.skipped)} already prepared -> "
          f"{result.output_folder} (target {result.target_dataset}, {result.data_identifier})")
    return 0


def main_prepare(argv: Sequence[str] | None = None) -> int:
    """Standalone entry: `python -m synthesis_bank.prepare --bank DIR --target DATASET`."""
    parser = argparse.ArgumentParser(prog="synthesis-bank prepare", description=prepare_bank.__doc__)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_prepare_args(args)
    except LdAugmentError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main_prepare())
