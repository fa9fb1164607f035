"""Fast stand-ins for ld_augment.pipeline.preprocess_case / synthesize_case (same signatures, same files).

They let the builder's bookkeeping (plan, resume, shards, manifest, label union) be tested in milliseconds.
LD_FAKE_HANG_CASE / LD_FAKE_HANG_MARKER make synthesize block on one case, so a test can SIGKILL the build
mid-case; with LD_FAKE_RELEASE it blocks only until that file exists (a concurrent build then finishes).
LD_FAKE_DELAY_S slows every case down (kill-at-any-moment tests). A report writer, if given, is asked for a
report like the real preprocess does (so a dead LLM server is hit).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np

LIVER = 5


def _load(img):
    return img if isinstance(img, nib.Nifti1Image) else nib.load(str(img))


def fake_preprocess(image, out_dir, *, organ, lesion_type, seg=None, attributes=None, num_lesions=1,
                    spacing=(1.0, 1.0, 1.0), report_writer=None, seed=0, shrink=False, avoid=None, case_id=None,
                    preview=True):
    ct = _load(image)
    data = np.asarray(ct.dataobj)  # a corrupt file raises here, like the real loader
    if report_writer is not None:
        report_writer.write(organ=organ, lesion_type=lesion_type, organ_extent=(20, 20, 20), seed=seed,
                            num_lesions=num_lesions)
    if seg is None:
        raise RuntimeError("fake pipeline has no TotalSegmentator")
    organ_mask = np.asarray(_load(seg).dataobj) == LIVER
    if not organ_mask.any():
        raise ValueError(f"organ {organ} not found in {seg}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    free = organ_mask.copy()
    if avoid is not None:
        free &= np.asarray(_load(avoid).dataobj) == 0
    rng = np.random.default_rng(seed)
    coords = np.argwhere(free)
    centers = [coords[int(rng.integers(len(coords)))].tolist() for _ in range(num_lesions)]
    np.save(out_dir / "free.npy", free)
    meta = {"format": "ld-augment-case/1", "case_id": case_id, "organ": organ, "lesion_type": lesion_type,
            "seed": seed, "source": {"path": str(image)}, "attributes": attributes or {},
            "bboxes": [{"center": c, "size": [3, 3, 3]} for c in centers]}
    (out_dir / "case.json").write_text(json.dumps(meta))
    return meta


def _maybe_hang(case_id: str) -> None:
    delay = float(os.environ.get("LD_FAKE_DELAY_S") or 0)
    if delay:
        time.sleep(delay)
    if os.environ.get("LD_FAKE_HANG_CASE") == case_id:
        Path(os.environ["LD_FAKE_HANG_MARKER"]).write_text(case_id)
        release = os.environ.get("LD_FAKE_RELEASE")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (release and Path(release).exists()):
            time.sleep(0.05)


def fake_synthesize(case_dir, out_dir, *, mask_engine="procedural", texture_engine="procedural", seed=0,
                    label_scheme=None, keep_standardized=False, device="cpu", preview=True, engine_options=None):
    case_dir, out_dir = Path(case_dir), Path(out_dir)
    meta = json.loads((case_dir / "case.json").read_text())
    _maybe_hang(meta["case_id"])
    scheme = label_scheme or {"background": 0, "organ": 1, "lesion": 2}
    src = nib.load(meta["source"]["path"])
    ct = np.asarray(src.dataobj).astype(np.float32)
    free = np.load(case_dir / "free.npy")
    lesion = np.zeros(ct.shape, dtype=bool)
    grid = np.indices(ct.shape)
    for box in meta["bboxes"]:
        c = np.asarray(box["center"]).reshape(3, 1, 1, 1)
        lesion |= (((grid - c) ** 2).sum(0) <= 4) & free
    ct[lesion] -= 40.0
    label = np.zeros(ct.shape, dtype=np.uint8)
    if "organ" in scheme:
        label[free | lesion] = scheme["organ"]
    label[lesion] = scheme["lesion"]
    out_dir.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct.astype(np.int16), src.affine), str(out_dir / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(label, src.affine), str(out_dir / "label.nii.gz"))
    (out_dir / "report.json").write_text(json.dumps({"5": [["round-like"], meta["bboxes"]]}))
    (out_dir / "synthesis.json").write_text(json.dumps({
        "engine": {"mask": {"name": getattr(mask_engine, "name", mask_engine)},
                   "texture": {"name": getattr(texture_engine, "name", texture_engine)}},
        "lesions": [{"index": 1, "adherence": {"dice_to_box": 0.5}}]}))
    if preview:
        (out_dir / "preview.png").write_bytes(b"\x89PNG fake")
    return None


FAKES = {"preprocess_fn": fake_preprocess, "synthesize_fn": fake_synthesize}


# A bank CLI process with the fake pipeline: `python -c CLI_WORKER <synthesis-bank arguments>`.
CLI_WORKER = """
import sys
sys.path.insert(0, {here!r})
import bank_fakes
import synthesis_bank.builder as builder
builder._default_pipeline = lambda: (bank_fakes.fake_preprocess, bank_fakes.fake_synthesize)
from synthesis_bank.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli_command(*args: str) -> list[str]:
    """argv of a `synthesis-bank` process that uses the fake pipeline."""
    import sys

    return [sys.executable, "-c", CLI_WORKER.format(here=str(Path(__file__).resolve().parent)), *args]
