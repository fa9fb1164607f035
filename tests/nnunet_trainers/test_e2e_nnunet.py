"""End to end with REAL nnU-Net on CPU: plan, prepare the bank, train our short variant, predict, evaluate.

Asserts what the trainer promises: the realized synthetic fraction follows the ratio, validation sees only
real cases, bank cases made from this fold's validation cases are excluded, predict works with -tr ours,
and a bank changed after prepare is refused with the fix. Minutes long: run with `pytest -m slow`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from nnunet_fixtures import make_bank, make_raw_dataset, nnunet_cmd, nnunet_env, run, stock_python
from nnunet_trainers.identity import run_name
from nnunet_trainers.shim import ext_trainer_dir

TRAINER = "nnUNetTrainerLesionDiffusion_5iters"
RATIO = 0.5


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_train_predict_with_bank(tmp_path):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    t0 = time.time()
    real = [f"case_{i:03d}" for i in range(5)]
    make_raw_dataset(tmp_path / "nnUNet_raw", 501, "Tiny", n_train=5, n_test=2, shape=(16, 16, 16))
    bank = make_bank(tmp_path / "bank", real + ["external_x"], failed=1, shape=(16, 16, 16))
    env = nnunet_env(tmp_path)
    run(nnunet_cmd("nnUNetv2_plan_and_preprocess") + ["-d", "501", "-c", "3d_fullres", "-np", "1",
                                                      "--verify_dataset_integrity"], env, tmp_path)
    out = run([sys.executable, "-m", "synthesis_bank.prepare", "--bank", str(bank), "--target", "501", "-np", "1"],
              env, tmp_path)
    assert "prepared 6 case(s)" in out.stdout

    train_env = nnunet_env(tmp_path, nnUNet_n_proc_DA="0", nnUNet_extTrainer=str(ext_trainer_dir()),
                           LD_BANK_DIR=str(bank), LD_BANK_RATIO=str(RATIO))
    run(nnunet_cmd("nnUNetv2_train") + ["501", "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"],
        train_env, tmp_path)

    val = set(generate_crossval_split(sorted(real), seed=12345, n_splits=5)[0]["val"])
    splits = json.loads((tmp_path / "nnUNet_preprocessed" / "Dataset501_Tiny" / "splits_final.json").read_text())
    assert set(splits[0]["val"]) == val
    named = run_name(TRAINER, RATIO, bank)          # the run's identity: ratio and bank in the folder name
    results = tmp_path / "nnUNet_results" / "Dataset501_Tiny"
    assert sorted(p.name for p in results.iterdir()) == [f"{named}__nnUNetPlans__3d_fullres"]
    fold = results / f"{named}__nnUNetPlans__3d_fullres" / "fold_0"
    rec = json.loads((fold / "lesiondiffusion_bank.json").read_text())
    # leakage: exactly the bank cases made from validation cases are out
    assert sorted(rec["excluded_ids"]) == sorted(f"ld_{v}_v0" for v in val)
    assert rec["n_bank_used"] == 6 - len(val) and rec["n_real_train"] == 5 - len(val)
    assert rec["ratio"] == RATIO and len(rec["manifest_sha256"]) == 64 and rec["bank_dir"] == str(bank)
    # realized fraction, counted from the batches actually trained on
    assert [e["epoch"] for e in rec["epochs"]] == [0, 1]
    synthetic = sum(e["synthetic"] for e in rec["epochs"])
    samples = sum(e["samples"] for e in rec["epochs"])
    assert samples == 2 * 5 * 2 and 0 < synthetic < samples
    assert abs(synthetic / samples - RATIO) <= 4 * math.sqrt(RATIO * (1 - RATIO) / samples)
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert log.count("realized synthetic fraction") == 2 and "excluded 1 bank case(s)" in log
    # final validation: real validation cases only
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    predicted = {c["prediction_file"].rsplit("/", 1)[-1][: -len(".nii.gz")] for c in summary["metric_per_case"]}
    assert predicted == val

    pred = tmp_path / "pred"
    run(nnunet_cmd("nnUNetv2_predict") + ["-i", str(tmp_path / "nnUNet_raw" / "Dataset501_Tiny" / "imagesTs"),
                                          "-o", str(pred), "-d", "501", "-c", "3d_fullres", "-f", "0",
                                          "-tr", named, "-device", "cpu", "-npp", "1", "-nps", "1",
                                          "--disable_tta"], train_env, tmp_path)
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == ["test_000.nii.gz", "test_001.nii.gz"]
    eval_code = (
        "import json, sys; from nnunet_trainers.evaluation import evaluate_predictions as e; "
        f"print(json.dumps(e('{pred}', '{tmp_path}/nnUNet_raw/Dataset501_Tiny/labelsTs', "
        f"'{tmp_path}/nnUNet_raw/Dataset501_Tiny/dataset.json', "
        f"'{tmp_path}/nnUNet_preprocessed/Dataset501_Tiny/nnUNetPlans.json', [2])))")
    metrics = json.loads(run([sys.executable, "-c", eval_code], env, tmp_path).stdout.strip().splitlines()[-1])
    assert 0.0 <= metrics["dice_organ"] <= 1.0 and metrics["n_ref_lesions"] == 2

    # exported as the stock nnUNetTrainer, plain nnU-Net predicts where ld-augment cannot even be imported
    out = run([sys.executable, "-m", "ld_augment.cli.main", "nnunet", "export", "-d", "501", "-c", "3d_fullres",
               "-tr", named, "-o", str(tmp_path / "shipped")], train_env, tmp_path)
    assert "checkpoint(s) of fold_0 ->" in out.stdout
    python, extra = stock_python(tmp_path / "stock_site")
    stock_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    stock_env.update(extra, nnUNet_results=str(tmp_path / "shipped"))
    probe = subprocess.run([*python, "-c", "import ld_augment"], env=stock_env, cwd=str(tmp_path),
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'ld_augment'" in probe.stderr
    stock_pred = tmp_path / "pred_stock"
    run([*python, *nnunet_cmd("nnUNetv2_predict")[1:], "-i", str(tmp_path / "nnUNet_raw" / "Dataset501_Tiny" / "imagesTs"),
         "-o", str(stock_pred), "-d", "501", "-c", "3d_fullres", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
         "--disable_tta", "--save_probabilities"], stock_env, tmp_path)
    # nnU-Net's other model tools on the shipped folder, still without ld-augment
    best = run([*python, *nnunet_cmd("nnUNetv2_find_best_configuration")[1:], "501", "-c", "3d_fullres", "-f", "0",
                "-np", "1"], stock_env, tmp_path)
    shipped = tmp_path / "shipped" / "Dataset501_Tiny"
    assert "nnUNetTrainer__nnUNetPlans__3d_fullres" in best.stdout
    assert (shipped / "inference_instructions.txt").is_file()
    assert json.loads((shipped / "inference_information.json").read_text())["best_model_or_ensemble"]
    ensembled = tmp_path / "pred_ensemble"
    run([*python, *nnunet_cmd("nnUNetv2_ensemble")[1:], "-i", str(stock_pred), str(stock_pred), "-o", str(ensembled),
         "-np", "1"], stock_env, tmp_path)
    assert sorted(p.name for p in ensembled.glob("*.nii.gz")) == ["test_000.nii.gz", "test_001.nii.gz"]
    import nibabel as nib
    import numpy as np

    for case in ("test_000.nii.gz", "test_001.nii.gz"):       # the same model: the same segmentation
        assert np.array_equal(np.asarray(nib.load(str(stock_pred / case)).dataobj),
                              np.asarray(nib.load(str(pred / case)).dataobj)), case
        assert np.array_equal(np.asarray(nib.load(str(ensembled / case)).dataobj),   # one model's ensemble: itself
                              np.asarray(nib.load(str(pred / case)).dataobj)), case

    # a bank that changed after prepare is refused, naming the fix
    with open(bank / "manifest.jsonl", "a") as fh:
        fh.write(json.dumps({"case_id": "late", "source_id": "x", "status": "failed"}) + "\n")
    with pytest.raises(AssertionError) as err:
        run(nnunet_cmd("nnUNetv2_train") + ["501", "3d_fullres", "1", "-tr", TRAINER, "-device", "cpu"],
            train_env, tmp_path)
    assert "manifest changed" in str(err.value) and "synthesis-bank prepare --bank" in str(err.value)
    print(f"end-to-end took {time.time() - t0:.0f} s")
