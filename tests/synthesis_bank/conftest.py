"""Generated bank sources: small CTs (40^3 at 1.5 mm) with an ellipsoid liver (TotalSegmentator id 5)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import pytest

SHAPE = (40, 40, 40)
SPACING = 1.5


def _affine() -> np.ndarray:
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = [-30.0, -25.0, 100.0]
    return affine


def make_ct(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(CT in HU as int16, organ seg with the liver = 5): air, soft-tissue body, spine, ellipsoid liver, noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(float)
    center = np.array([20, 20, 20]).reshape(3, 1, 1, 1) + rng.integers(-2, 3, size=(3, 1, 1, 1))
    radii = np.array([12, 9, 8]).reshape(3, 1, 1, 1)
    liver = (((grid - center) / radii) ** 2).sum(0) <= 1.0
    ct = np.full(SHAPE, -1000.0)
    body = (((grid - 20) / 19) ** 2).sum(0) <= 1.0
    ct[body] = 40.0
    ct[liver] = 60.0
    spine = ((grid[0] - 20) ** 2 + (grid[1] - 34) ** 2) <= 9
    ct[spine & body] = 400.0  # bone: a real CT's range reaches well above soft tissue
    ct += rng.normal(0, 5, SHAPE)
    seg = np.where(liver, 5, 0).astype(np.uint8)
    return ct.astype(np.int16), seg


def save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, _affine())
    img.set_qform(_affine(), code=1)
    img.set_sform(_affine(), code=1)
    nib.save(img, str(path))
    return path


def _load_fakes():
    """bank_fakes.py by file path: pytest runs with --import-mode=importlib, so test folders are not on sys.path."""
    spec = importlib.util.spec_from_file_location("ld_bank_fakes", Path(__file__).with_name("bank_fakes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bank_fakes():
    """The fake pipeline module (fake_preprocess, fake_synthesize, FAKES = build_bank keyword arguments)."""
    return _load_fakes()


@pytest.fixture(scope="session")
def fakes(bank_fakes) -> dict[str, Callable[..., Any]]:
    return dict(bank_fakes.FAKES)


@pytest.fixture(scope="session")
def save_nifti() -> Callable[[np.ndarray, Path], Path]:
    return save


@pytest.fixture
def ct_folder(tmp_path: Path) -> tuple[Path, Path]:
    """(cts/, segs/) with three cases matched by file name."""
    cts, segs = tmp_path / "cts", tmp_path / "segs"
    for i, name in enumerate(["case_a", "case_b", "case_c"]):
        ct, seg = make_ct(i)
        save(ct, cts / f"{name}.nii.gz")
        save(seg, segs / f"{name}.nii.gz")
    return cts, segs


@pytest.fixture
def nnunet_raw(tmp_path: Path) -> tuple[Path, Path]:
    """(Dataset010_Liver raw folder with liver=1, tumor=2 labels, TotalSegmentator-style segs folder)."""
    root, segs = tmp_path / "Dataset010_Liver", tmp_path / "raw_segs"
    for i, case in enumerate(["liver_000", "liver_001"]):
        ct, seg = make_ct(10 + i)
        label = np.where(seg == 5, 1, 0).astype(np.uint8)
        label[18:22, 18:22, 18:22] = 2  # an annotated tumour inside the liver
        save(ct, root / "imagesTr" / f"{case}_0000.nii.gz")
        save(label, root / "labelsTr" / f"{case}.nii.gz")
        save(seg, segs / f"{case}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return root, segs


@pytest.fixture
def recipe_dict(ct_folder: tuple[Path, Path]) -> dict[str, Any]:
    cts, segs = ct_folder
    return {
        "sources": {"folder": str(cts), "segmentations": str(segs)},
        "organs": ["liver"],
        "lesion_types": {"liver tumor": 0.7, "liver cyst": 0.3},
        "attributes": {"density": {"choices": {"hypodense lesion": 0.8, "isodense lesion": 0.2}},
                       "density variations": "homogeneous"},
        "lesions_per_case": [1, 2],
        "variants_per_source": 2,
        "seed": 7,
        "segmentation": "error",
        "dataset_name": "LiverBank",
        "dataset_id": 501,
    }


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[..., Path]:
    def _write(data: dict[str, Any], name: str = "recipe.json") -> Path:
        path = tmp_path / name
        if name.endswith(".json"):
            path.write_text(json.dumps(data))
        else:
            import yaml

            path.write_text(yaml.safe_dump(data))
        return path

    return _write


@pytest.fixture(scope="session")
def verify() -> Callable[[Path], None]:
    """nnU-Net's own verify_dataset_integrity on a bank folder (raises on any inconsistency)."""
    pytest.importorskip("nnunetv2")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    def _verify(folder: Path) -> None:
        verify_dataset_integrity(str(folder), num_processes=1)

    return _verify
