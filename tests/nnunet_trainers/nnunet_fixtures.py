"""Fabricated nnU-Net raw datasets and banks (small ellipsoid organs with a lesion, real affines) for tests.

Shared by tests/nnunet_trainers and tests/scripts (the latter puts this folder on sys.path in its conftest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
LABELS = {"background": 0, "organ": 1, "lesion": 2}
AFFINE = np.array([[1.5, 0, 0, -20.0], [0, 1.5, 0, 10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def make_case(rng: np.random.Generator, shape=(24, 24, 20), lesion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CT-like volume (HU) with an ellipsoid organ and, optionally, a darker spherical lesion inside it."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array(shape) / 2 + rng.uniform(-1.5, 1.5, 3)
    radii = np.array(shape) * rng.uniform(0.28, 0.36, 3)
    organ = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    label = organ.astype(np.uint8)
    ct = rng.normal(-80, 15, shape).astype(np.float32)
    ct[organ] = rng.normal(60, 10, int(organ.sum()))
    if lesion:
        lc = centre + rng.uniform(-2, 2, 3)
        r = rng.uniform(2.5, 3.5)
        les = (((grid - lc[:, None, None, None]) ** 2).sum(0) <= r * r) & organ
        label[les] = 2
        ct[les] = rng.normal(10, 8, int(les.sum()))
    return ct, label


def save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, AFFINE), str(path))


def make_raw_dataset(raw: Path, dataset_id: int = 501, name: str = "Tiny", n_train: int = 5, n_test: int = 0,
                     seed: int = 0, shape=(24, 24, 20)) -> Path:
    """nnU-Net v2 raw dataset `Dataset{id}_{name}` with cases case_000.. (and test cases test_000..)."""
    rng = np.random.default_rng(seed)
    root = raw / f"Dataset{dataset_id:03d}_{name}"
    for i in range(n_train):
        ct, lab = make_case(rng, shape)
        save(ct, root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        save(lab, root / "labelsTr" / f"case_{i:03d}.nii.gz")
    for i in range(n_test):
        ct, lab = make_case(rng, shape)
        save(ct, root / "imagesTs" / f"test_{i:03d}_0000.nii.gz")
        save(lab, root / "labelsTs" / f"test_{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": n_train, "file_ending": ".nii.gz"}))
    return root


def make_bank(bank: Path, sources: list[str], variants: int = 1, failed: int = 0, seed: int = 1,
              labels: dict | None = None, shape=(24, 24, 20), organ: str | None = None,
              lesion_type: str | None = None) -> Path:
    """A bank folder in the builder's format; `failed` extra manifest lines with status "failed" and no files."""
    rng = np.random.default_rng(seed)
    lines = []
    for src in sources:
        for v in range(variants):
            case_id = f"ld_{src}_v{v}"
            ct, lab = make_case(rng, shape)
            save(ct, bank / "imagesTr" / f"{case_id}_0000.nii.gz")
            save(lab, bank / "labelsTr" / f"{case_id}.nii.gz")
            lines.append({"case_id": case_id, "source_id": src, "source_file": f"/raw/imagesTr/{src}_0000.nii.gz",
                          "source_sha256": "0" * 64, "reports": [], "bboxes": [], "engine": {"name": "procedural"},
                          "checkpoints": {}, "seed": v, "timings": {}, "adherence": {}, "status": "ok",
                          "organ": organ, "lesion_type": lesion_type})
    for k in range(failed):
        lines.append({"case_id": f"ld_failed_{k}", "source_id": sources[0], "status": "failed"})
    n_ok = len(sources) * variants
    (bank / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": labels or LABELS, "numTraining": n_ok, "file_ending": ".nii.gz"}))
    (bank / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (bank / "previews").mkdir(exist_ok=True)
    return bank


def nnunet_env(root: Path, **extra: str) -> dict[str, str]:
    """A clean environment for nnUNetv2_* subprocesses rooted in `root` (tiny process counts, CPU)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet", "LD_BANK"))}
    env.update({
        "nnUNet_raw": str(root / "nnUNet_raw"), "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"), "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1",
        "nnUNet_compile": "f", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    })
    env.update(extra)
    return env


def nnunet_cmd(tool: str) -> list[str]:
    """Run an nnU-Net console script through this interpreter (works without the scripts on PATH)."""
    entry = {
        "nnUNetv2_plan_and_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry",
        "nnUNetv2_plan_experiment": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_experiment_entry",
        "nnUNetv2_train": "nnunetv2.run.run_training:run_training_entry",
        "nnUNetv2_predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
        "nnUNetv2_ensemble": "nnunetv2.ensembling.ensemble:entry_point_ensemble_folders",
        "nnUNetv2_find_best_configuration": "nnunetv2.evaluation.find_best_configuration:find_best_configuration_entry_point",
    }[tool]
    module, func = entry.split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func} as f; sys.argv[0] = '{tool}'; sys.exit(f())"]


def run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=str(cwd), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd[-1] if cmd[0] != sys.executable else cmd}\nrc={proc.returncode}\n"
                             f"STDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}")
    return proc


TINY_ARCH = {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
             "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
             "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
             "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
             "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
             "nonlin_kwargs": {"inplace": True}}


def tiny_plans(dataset_name: str, patch=(12, 12, 12), spacing=(2.0, 1.5, 1.5)) -> dict:
    """A hand-written 3d_fullres plan of the kind nnUNetv2_plan_experiment writes (for in-process tests)."""
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": dataset_name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [20, 24, 24],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 100.0, "mean": 55.0, "median": 58.0, "min": -15.0, "percentile_00_5": -4.0,
            "percentile_99_5": 85.0, "std": 17.0}},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [20.0, 24.0, 24.0],
            "spacing": list(spacing), "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": resample,
            "resampling_fn_seg_kwargs": dict(resample, is_seg=True, order=1),
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": dict(resample, order=1),
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": TINY_ARCH, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op",
                                                                               "nonlin"]},
            "batch_dice": False}},
    }


def make_planned_target(root: Path, dataset_id: int = 501, name: str = "Tiny", labels: dict | None = None,
                        spacing=(2.0, 1.5, 1.5)) -> str:
    """nnUNet_raw + nnUNet_preprocessed folders with dataset.json and a hand-written plan (no preprocessing)."""
    ds_name = f"Dataset{dataset_id:03d}_{name}"
    (root / "nnUNet_raw" / ds_name).mkdir(parents=True, exist_ok=True)
    pre = root / "nnUNet_preprocessed" / ds_name
    pre.mkdir(parents=True, exist_ok=True)
    ds = {"channel_names": {"0": "CT"}, "labels": labels or LABELS, "numTraining": 0, "file_ending": ".nii.gz"}
    for folder in (root / "nnUNet_raw" / ds_name, pre):
        (folder / "dataset.json").write_text(json.dumps(ds))
    (pre / "nnUNetPlans.json").write_text(json.dumps(tiny_plans(ds_name, spacing=spacing)))
    (root / "nnUNet_results").mkdir(exist_ok=True)
    return ds_name


OUR_PACKAGES = ("ld_augment", "synthesis_bank", "nnunet_trainers", "ld-augment", "ld_augment-")


def stock_python(folder: Path) -> tuple[list[str], dict[str, str]]:
    """(interpreter command, env additions) for a Python in which nnU-Net imports and ld-augment does not.

    `-S` skips site-packages and its .pth files (which is how an editable install is found); PYTHONPATH then
    points at a folder of links to every site-packages entry except ours, so a regular (non-editable) install
    is hidden too. Run it with a cwd outside the repository.
    """
    import sysconfig

    folder.mkdir(parents=True, exist_ok=True)
    for key in ("purelib", "platlib"):
        site = Path(sysconfig.get_paths()[key])
        for entry in site.iterdir():
            name = entry.name
            if name.startswith(OUR_PACKAGES) or name.startswith("__editable__") or name.endswith((".pth", ".egg-link")):
                continue
            link = folder / name
            if not link.exists():
                link.symlink_to(entry)
    return [sys.executable, "-S"], {"PYTHONPATH": str(folder), "PYTHONNOUSERSITE": "1"}
