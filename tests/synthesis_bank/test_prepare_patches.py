"""Patches bank -> prepare under nnUNet_preprocessed -> composed at load time equals full preprocessing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from synthesis_bank.builder import build_bank  # noqa: E402
from synthesis_bank.materialize import materialize_bank  # noqa: E402
from synthesis_bank.nnunet_io import read_bank_cases  # noqa: E402
from synthesis_bank.patch_io import load_patch_record, patch_prepared_folder  # noqa: E402
from synthesis_bank.prepare import prepare_bank  # noqa: E402
from synthesis_bank.recipe import Recipe  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nnunet_trainers"))
from nnunet_fixtures import make_planned_target  # noqa: E402

from nnunet_trainers.composed import ComposedBankDataset, PreparedPatchSource  # noqa: E402

#: what "equals full preprocessing" means for a resampled configuration (normalized intensity units; labels)
RESAMPLED_MAX_ABS = 1e-3
RESAMPLED_LABEL_AGREEMENT = 0.999


def _bank(recipe_dict, root, fakes, **extra) -> Path:
    bank = root / "bank"
    data = dict(recipe_dict, storage="patches", **extra)
    assert build_bank(Recipe.from_dict(data, base_dir=Path("/")), bank, progress=False, **fakes).ok
    return bank


def _target(root, monkeypatch, spacing):
    name = make_planned_target(root, spacing=spacing)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(root / var))
    return name


def _full(bank: Path, case_id: str, name: str, root: Path):
    """nnU-Net's own preprocessing of the materialized (full) case: the reference."""
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = root / "nnUNet_preprocessed" / name
    pm = PlansManager(json.loads((pre / "nnUNetPlans.json").read_text()))
    cm = pm.get_configuration("3d_fullres")
    ds = json.loads((pre / "dataset.json").read_text())
    return cm.preprocessor_class(verbose=False).run_case(
        [str(bank / "imagesTr" / f"{case_id}_0000.nii.gz")], str(bank / "labelsTr" / f"{case_id}.nii.gz"),
        pm, cm, ds)


def _composed(bank, name, root):
    folder = patch_prepared_folder(root / "nnUNet_preprocessed", name, "nnUNetPlans_3d_fullres", bank)
    record = load_patch_record(folder, fix="prepare")
    ids = sorted(record["cases"])
    return folder, record, ComposedBankDataset(folder, PreparedPatchSource(folder, record["cases"]), ids), ids


@pytest.mark.parametrize("spacing, method", [((1.5, 1.5, 1.5), "local"), ((2.0, 1.7, 1.3), "local-resampled"),
                                             ((5.0, 1.5, 1.5), "exact")])   # anisotropic: separate-z resampling
def test_composed_case_equals_full_preprocessing(recipe_dict, tmp_path, fakes, monkeypatch, spacing, method):
    bank = _bank(recipe_dict, tmp_path, fakes)
    name = _target(tmp_path, monkeypatch, spacing)
    result = prepare_bank(bank, name, num_processes=1, progress=False)
    folder, record, ds, ids = _composed(bank, name, tmp_path)
    assert result.output_folder == folder and folder.parent == tmp_path / "nnUNet_preprocessed" / name
    # nothing prepared inside the bank (only prepare's fingerprint cache for the leakage guard)
    assert not [p for p in (bank / "nnUNet_preprocessed").rglob("*") if p.is_file() and p.suffix != ".npz"
                and p.name != "prepared.json"]
    assert {c["method"] for c in record["cases"].values()} == {method}
    assert len(record["sources"]) == 3 and len(ids) == 6               # one preprocessed copy per source
    materialize_bank(bank)
    worst, agree = 0.0, []
    for cid in ids:
        data, seg, _, props = ds.load_case(cid)
        ref_data, ref_seg, ref_props = _full(bank, cid, name, tmp_path)
        assert data.shape == ref_data.shape and seg.shape == ref_seg.shape
        d, s = np.asarray(data), np.asarray(seg)
        worst = max(worst, float(np.abs(d - ref_data).max()))
        agree.append(float((s == ref_seg).mean()))
        lesion = 2
        assert len(props["class_locations"][lesion]) > 0                # the new lesion can be oversampled
        locs = np.asarray(props["class_locations"][lesion])
        assert np.all(s[tuple(locs.T)] == lesion)
        # the patch is a region, not the case
        assert np.prod(record["cases"][cid]["shape"]) < 0.25 * d.size
    print(f"{method}: max |composed - full| = {worst:.3g} (normalized), label agreement {min(agree):.6f}")
    if method in ("local", "exact"):
        assert worst == 0.0 and min(agree) == 1.0                       # bit for bit
    else:
        assert worst <= RESAMPLED_MAX_ABS and min(agree) >= RESAMPLED_LABEL_AGREEMENT, (worst, min(agree))
    again = prepare_bank(bank, name, num_processes=1, progress=False)
    assert not again.prepared and len(again.skipped) == 6


def test_composed_dataset_feeds_nnunet_loader(recipe_dict, tmp_path, fakes, monkeypatch):
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    bank = _bank(recipe_dict, tmp_path, fakes)
    name = _target(tmp_path, monkeypatch, (1.5, 1.5, 1.5))
    prepare_bank(bank, name, num_processes=1, progress=False)
    _, _, ds, ids = _composed(bank, name, tmp_path)
    ds.identifiers = np.asarray(ids)
    lm = LabelManager({"background": 0, "organ": 1, "lesion": 2}, regions_class_order=None)
    loader = nnUNetDataLoader(ds, 2, (16, 16, 16), (16, 16, 16), lm, oversample_foreground_percent=1.0,
                              probabilistic_oversampling=True)
    batches = [next(loader) for _ in range(8)]
    assert all(tuple(b["data"].shape) == (2, 1, 16, 16, 16) and (b["target"] > 0).any() for b in batches)
    assert any((b["target"] == 2).any() for b in batches)               # the composed lesion is drawn


def test_patch_case_keys_are_bank_cases(recipe_dict, tmp_path, fakes):
    bank = _bank(recipe_dict, tmp_path, fakes)
    cases = read_bank_cases(bank)
    from synthesis_bank.patch_io import is_patch_bank
    assert is_patch_bank(cases) and len(cases) == 6


def test_full_stored_case_of_a_patch_bank_is_its_own_source(recipe_dict, tmp_path, fakes, monkeypatch):
    from synthesis_bank import patch_store

    real, calls = patch_store.cut_patch, []

    def first_is_no_patch(*args, **kwargs):
        calls.append(1)
        return None if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(patch_store, "cut_patch", first_is_no_patch)
    bank = _bank(recipe_dict, tmp_path, fakes, variants_per_source=1)
    monkeypatch.setattr(patch_store, "cut_patch", real)
    name = _target(tmp_path, monkeypatch, (1.5, 1.5, 1.5))
    prepare_bank(bank, name, num_processes=1, progress=False)
    _, record, ds, ids = _composed(bank, name, tmp_path)
    assert sorted(c["method"] for c in record["cases"].values()) == ["full", "local", "local"]
    materialize_bank(bank)
    for cid in ids:
        data, seg, _, _ = ds.load_case(cid)
        ref_data, ref_seg, _ = _full(bank, cid, name, tmp_path)
        assert np.array_equal(np.asarray(data), ref_data) and np.array_equal(np.asarray(seg), ref_seg)
