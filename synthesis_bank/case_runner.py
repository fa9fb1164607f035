"""One bank case: preprocess -> synthesize -> (label union) -> move files into place -> manifest entry.

Kept apart from the builder's loop so the crash-safety order (files first, manifest line after) reads in one
place, and so any error of one source becomes a "failed" entry instead of ending the batch. Errors that will
repeat on every case (missing weights or dependencies, a dead LLM server, bad engine options, a full or
read-only output disk) are marked "systemic" in the entry: the builder then stops instead of failing each case.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ld_augment.errors import CheckpointError, LdAugmentError, MissingDependencyError
from ld_augment.io.atomic import atomic_save_nifti, default_file_mode
from ld_augment.io.nifti import open_header, sha256_file
from ld_augment.io.standardize import check_memory_budget

from synthesis_bank.label_mapping import source_roles, source_to_scheme
from synthesis_bank.labels import existing_lesions, label_dtype, union_labels
from synthesis_bank.manifest import file_record, image_path, label_path
from synthesis_bank.plan import WorkItem
from synthesis_bank.recipe import LlmWriter, Recipe

ENTRY_FORMAT = "ld-augment-bank-case/1"
#: errnos that mean the output disk cannot take more (every later case would fail the same way).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class SetupError(LdAugmentError):
    """Building the recipe's engines or report writer failed: no case of this build can succeed."""


class CaseTimeout(LdAugmentError):
    """A case ran past the build's per-case time limit."""


def systemic_reason(exc: BaseException, out_dir: Path) -> str | None:
    """Why `exc` will fail every case (so the build should stop), or None for a problem of this case only."""
    if isinstance(exc, (SetupError, MissingDependencyError, CheckpointError)) or getattr(exc, "systemic", False):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        where = exc.filename or ""
        inside = bool(where) and Path(str(where)).resolve().is_relative_to(out_dir)
        if exc.errno in DISK_ERRNOS or inside:
            return f"{where or out_dir}: {exc.strerror or exc}"
    return None


@contextmanager
def time_limit(seconds: float | None, case_id: str) -> Iterator[None]:
    """Raise CaseTimeout in the block after `seconds` (SIGALRM: main thread only; elsewhere no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"case {case_id} exceeded the per-case time limit of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (the directory entry), so a crash cannot undo a move the manifest relies on."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move_into_place(src: Path, dst: Path) -> None:
    with open(src, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(src, default_file_mode())
    os.replace(src, dst)
    _fsync_dir(dst.parent)


def make_report_writer(recipe: Recipe, *, timeout_s: float | None = None, max_retries: int | None = None) -> Any:
    """None for the offline writer (the pipeline's default); the LLM writer built from the recipe otherwise.
    `timeout_s` / `max_retries` (from the command line) override the recipe's."""
    if not isinstance(recipe.report_writer, LlmWriter):
        if recipe.calibrate_from is not None:  # real lesions instead of the priors (measured once per build)
            from synthesis_bank.calibration import make_writer

            return make_writer(recipe.calibrate_from, recipe.spacing, seed=recipe.seed)
        return None
    try:
        from ld_augment.reports.llm import LLMReportWriter  # type: ignore[import-not-found]
    except ImportError as exc:
        raise MissingDependencyError(f"{recipe.origin}: report_writer llm needs ld_augment.reports.llm ({exc})") from exc
    spec = recipe.report_writer
    return LLMReportWriter(base_url=spec.base_url, model=spec.model,
                           timeout_s=timeout_s if timeout_s is not None else spec.timeout_s,
                           max_retries=max_retries if max_retries is not None else spec.max_retries)


class CaseRunner:
    """Runs work items of one recipe; caches what all variants of a source share (hashes, the avoid mask)."""

    def __init__(self, recipe: Recipe, out_dir: Path, work_root: Path,
                 preprocess_fn: Callable[..., Any], synthesize_fn: Callable[..., Any], *,
                 allow_pickle: bool = False, case_timeout_s: float | None = None,
                 llm_timeout_s: float | None = None, llm_retries: int | None = None) -> None:
        self.allow_pickle = allow_pickle
        self.case_timeout_s = case_timeout_s
        self.llm_options = {"timeout_s": llm_timeout_s, "max_retries": llm_retries}
        self.recipe = recipe
        self.out_dir = out_dir
        self.work_root = work_root
        self.preprocess_fn = preprocess_fn
        self.synthesize_fn = synthesize_fn
        self._sha: dict[Path, str] = {}
        self._writer: Any = None
        self._writer_ready = False
        self._engine_pair: tuple[Any, Any] | None = None
        self._bases: Any = None  # patch_store.BaseLabels of a `storage: patches` bank
        self._setup_lock = threading.RLock()  # pooled cases (builder --batch-cases) share engines and writer
        self.checkpoints = {name: self._hash(path) for name, path in recipe.engine.checkpoints.items()}

    def _hash(self, path: Path) -> str:
        if path not in self._sha:
            self._sha[path] = sha256_file(path)
        return self._sha[path]

    def _engines(self) -> tuple[Any, Any]:
        """The recipe's engines, created once per build (loading and hashing weights once, not per case)."""
        with self._setup_lock:
            return self._make_engines()

    def _make_engines(self) -> tuple[Any, Any]:
        if self._engine_pair is None:
            from ld_augment.engines.registry import engine_parameters
            from ld_augment.pipeline.synthesize import make_engines

            spec = self.recipe.engine
            options = {"mask": dict(spec.mask_options), "texture": dict(spec.texture_options)}
            if self.allow_pickle:  # only ever from the command line (recipes cannot carry it)
                for role, name in (("mask", spec.mask), ("texture", spec.texture)):
                    if "allow_pickle" in engine_parameters(role, name):
                        options[role]["allow_pickle"] = True
            try:
                self._engine_pair = make_engines(spec.mask, spec.texture, device=spec.device, options=options)
            except (OSError, LdAugmentError, ImportError, TypeError, ValueError) as exc:
                raise SetupError(f"{self.recipe.origin}: cannot build the engines {spec.mask}/{spec.texture}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        return self._engine_pair

    def _report_writer(self) -> Any:
        with self._setup_lock:
            return self._make_report_writer()

    def _make_report_writer(self) -> Any:
        if not self._writer_ready:
            try:
                self._writer = make_report_writer(self.recipe, **self.llm_options)
            except LdAugmentError as exc:
                raise SetupError(f"report writer: {exc}") from exc
            self._writer_ready = True
        return self._writer

    def _base_entry(self, item: WorkItem) -> dict[str, Any]:
        engine = self.recipe.engine
        return {
            "format": ENTRY_FORMAT,
            "case_id": item.case_id,
            "source_id": item.source.source_id,
            "source_file": str(item.source.image),
            "source_label": str(item.source.label) if item.source.label else None,
            "source_seg": str(item.source.seg) if item.source.seg else None,   # organ map for target classes
            "variant": item.variant,
            "seed": item.seed,
            "organ": item.organ,
            "lesion_type": item.lesion_type,
            "num_lesions": item.num_lesions,
            "attributes": dict(item.attributes),
            "engine": {"mask": engine.mask, "texture": engine.texture},
            "checkpoints": dict(self.checkpoints),
            **({"allow_pickle": True} if self.allow_pickle else {}),
        }

    def run(self, item: WorkItem) -> dict[str, Any]:
        """Make one case; never raises for a problem of this case (returns a "failed" entry)."""
        entry = self._base_entry(item)
        work = self.work_root / item.case_id
        t0 = time.perf_counter()
        try:
            with time_limit(self.case_timeout_s, item.case_id):
                entry["source_sha256"] = self._hash(item.source.image)
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
                entry.update(self._make(item, work, t0))
            entry["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a bad source is logged and skipped, the batch goes on
            entry.setdefault("source_sha256", None)
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc(limit=6),
                         timings={"total_s": round(time.perf_counter() - t0, 3)})
            reason = systemic_reason(exc, self.out_dir)
            if reason:
                entry["systemic"] = reason
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return entry

    def _make(self, item: WorkItem, work: Path, t0: float) -> dict[str, Any]:
        import nibabel as nib

        recipe = self.recipe
        # header only: an absurd voxel size fails here in milliseconds, before any voxel (the source label's
        # too) is read, TotalSegmentator runs or a swap storm starts
        ct_header = open_header(item.source.image, "source CT")  # size, file and field-of-view checks
        check_memory_budget(ct_header, recipe.spacing, name=str(item.source.image))
        avoid = None
        source_label = None
        seg = str(item.source.seg) if item.source.seg else None
        organ_from_source = False
        if item.source.label is not None:
            label_img = open_header(item.source.label, "source label", like=ct_header)  # no voxel read yet
            source_label = np.asarray(label_img.dataobj)
            if item.source.label_classes:   # the source's own classes, read as organ / other organ / lesion
                roles = source_roles(dict(item.source.label_classes), item.organ)
                organ_from_source = seg is None and item.source.labels_organ(item.organ)
                if organ_from_source:   # the annotated organ (with its lesions) is the organ segmentation
                    inside = [v for v, role in roles.items() if role in ("organ", "lesion")]
                    seg = str(work / "organ_from_label.nii.gz")
                    atomic_save_nifti(nib.Nifti1Image(np.isin(source_label, inside).astype(np.uint8),
                                                      label_img.affine), seg)  # a full disk names the file
                source_label = source_to_scheme(source_label, roles, recipe.label_scheme, file=str(item.source.label))
            avoid = nib.Nifti1Image(existing_lesions(source_label, recipe.label_scheme).astype(np.uint8),
                                    label_img.affine, label_img.header)
        organ_source = "source label" if organ_from_source else "user" if item.source.seg else "totalsegmentator"
        case_dir, synth_dir = work / "case", work / "synth"
        self.preprocess_fn(
            str(item.source.image), case_dir, organ=item.organ, lesion_type=item.lesion_type,
            seg=seg, attributes=dict(item.attributes) or None,
            num_lesions=item.num_lesions, spacing=recipe.spacing, report_writer=self._report_writer(),
            seed=item.seed, shrink=recipe.shrink, avoid=avoid, case_id=item.case_id, preview=False,
        )
        t1 = time.perf_counter()
        mask_engine, texture_engine = self._engines()
        result = self.synthesize_fn(
            case_dir, synth_dir, mask_engine=mask_engine, texture_engine=texture_engine,
            seed=item.seed, label_scheme=dict(recipe.label_scheme), device=recipe.engine.device, preview=True,
        )
        t2 = time.perf_counter()
        label_file = synth_dir / "label.nii.gz"
        if source_label is not None:
            label_file = self._union(source_label, item, label_file, work,
                                     organ_from="source" if organ_from_source else "synth")
        record = _read_json(synth_dir / "synthesis.json") or dict(getattr(result, "record", None) or {})
        case_meta = _read_json(case_dir / "case.json") or {}
        report = _read_json(synth_dir / "report.json")

        files = {"image": file_record(synth_dir / "ct.nii.gz"), "label": file_record(label_file)}
        storage = self._store(item, synth_dir / "ct.nii.gz", label_file)
        preview = synth_dir / "preview.png"
        if preview.is_file():
            os.chmod(preview, default_file_mode())
            os.replace(preview, self.out_dir / "previews" / f"{item.case_id}.png")
        t3 = time.perf_counter()
        lesions = record.get("lesions") or []
        return {
            "organ_segmentation": organ_source,
            **({"calibration": self._writer.provenance()} if getattr(self._writer, "name", "") == "calibrated" else {}),
            "files": files,
            **({"storage": storage} if storage else {}),
            "reports": report if report is not None else record.get("report"),
            "bboxes": case_meta.get("bboxes", []),
            "engine_provenance": record.get("engine"),
            "adherence": [lesion.get("adherence") for lesion in lesions],
            "quality": [lesion.get("quality") for lesion in lesions],  # the per-lesion gate's verdicts
            "quality_gate": record.get("quality_gate"),
            "skipped_lesions": record.get("skipped_lesions", []),
            "timings": {"preprocess_s": round(t1 - t0, 3), "synthesize_s": round(t2 - t1, 3),
                        "write_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3)},
        }

    def _store(self, item: WorkItem, ct_file: Path, label_file: Path) -> dict[str, Any] | None:
        """Put the case's files in place: full copies into imagesTr/labelsTr, or (recipe `storage: patches`) its
        patch against the source (synthesis_bank.patch_store); returns the manifest's "storage" block, or None
        for full files. A case that is no patch of its source (another shape or dtype) is stored in full."""
        if self.recipe.storage == "patches":
            from synthesis_bank import patch_store

            with self._setup_lock:
                if self._bases is None:
                    self._bases = patch_store.BaseLabels(self.out_dir)
            scheme = self.recipe.label_scheme
            new_values = [scheme[k] for k in ("lesion", "ignore") if k in scheme]
            sha = self._hash(item.source.image)
            cut = patch_store.cut_patch(ct_file, label_file, item.source.image, sha, self._bases, new_values,
                                        fill_value=scheme.get("organ", scheme["background"]))
            if cut is not None:
                patch, base = cut
                target = patch_store.patch_path(self.out_dir, item.case_id)
                patch_store.save_patch(target, patch)
                return {"mode": "patches", "patch": str(target.relative_to(self.out_dir)),
                        "patch_sha256": sha256_file(target), "box": patch.box.tolist(),
                        "base_label": base, "source": patch_store.source_reference(item.source.image, sha)}
        _move_into_place(ct_file, image_path(self.out_dir, item.case_id))
        _move_into_place(label_file, label_path(self.out_dir, item.case_id))
        return None

    def _union(self, source_label: np.ndarray, item: WorkItem, synth_label: Path, work: Path, *,
               organ_from: str) -> Path:
        """Existing labels kept, new lesions added; written next to the synthesized label, in its grid."""
        import nibabel as nib

        from ld_augment.errors import InputError
        from ld_augment.io.atomic import atomic_save_nifti

        synth_img = nib.load(str(synth_label))
        synth = np.asarray(synth_img.dataobj)
        if synth.shape != source_label.shape:
            raise InputError(f"{item.source.label}: label shape {source_label.shape} differs from its CT "
                             f"{item.source.image} ({synth.shape})")
        # one organ boundary per case: the source's annotated organ when it was the segmentation, else the
        # segmentation's (user or TotalSegmentator) organ replaces the source's
        merged = union_labels(source_label, synth, self.recipe.label_scheme, organ_from=organ_from)
        merged = merged.astype(label_dtype(self.recipe.label_scheme))
        img = nib.Nifti1Image(merged, synth_img.affine, synth_img.header)
        img.set_data_dtype(merged.dtype)
        return atomic_save_nifti(img, work / "label_union.nii.gz")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
