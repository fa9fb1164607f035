"""`ld-augment nnunet export`: a bank-trained model folder rewritten as the stock nnUNetTrainer's.

The checkpoints are real: nnU-Net's own trainer builds the network from a tiny plan and writes them with its
own `save_checkpoint`, so the key layout is nnU-Net's. The slow test in test_e2e_nnunet.py predicts with the
exported model in an interpreter where ld-augment cannot be imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

from pathlib import Path

import pytest
import torch

from ld_augment.errors import ConfigError
from nnunet_fixtures import REPO, make_planned_target

pytest.importorskip("nnunetv2")
from nnunet_trainers import trainer as T  # noqa: E402
from nnunet_trainers.export import PROVENANCE_FILE, export_model, load_checkpoint  # noqa: E402

TRAINER = "nnUNetTrainerLesionDiffusion_5iters_r000"     # what `-tr ..._5iters` with LD_BANK_RATIO=0 trains as


def _trained(tmp_path, monkeypatch, cls=T.nnUNetTrainerLesionDiffusion_5iters, folds=(0, 1)):
    """A results folder as nnUNetv2_train leaves it: plans/dataset json, fold folders, real checkpoints."""
    name = make_planned_target(tmp_path)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.setenv("LD_BANK_RATIO", "0")
    monkeypatch.delenv("LD_BANK_DIR", raising=False)
    pre = tmp_path / "nnUNet_preprocessed" / name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    ds_json = json.loads((pre / "dataset.json").read_text())
    (pre / "nnUNetPlans_3d_fullres").mkdir()        # initialize() infers the data format from a file ending
    (pre / "nnUNetPlans_3d_fullres" / "x.b2nd").touch()
    for fold in folds:
        tr = cls(plans=dict(plans, continue_training=False), configuration="3d_fullres", fold=fold, dataset_json=ds_json,
                 device=torch.device("cpu"))
        model = Path(tr.output_folder_base)         # the run-identity variant's folder (ratio 0: `..._r000`)
        tr.initialize()
        fold_dir = model / f"fold_{fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        tr.save_checkpoint(str(fold_dir / "checkpoint_final.pth"))
        (fold_dir / "validation").mkdir(exist_ok=True)
        (fold_dir / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": 0.5}}))
        (fold_dir / "lesiondiffusion_bank.json").write_text(json.dumps({"ratio": 0.5, "fold": fold}))
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps(ds_json))
    (model / "dataset_fingerprint.json").write_text("{}")
    return tmp_path, name, model


def test_export_rewrites_trainer_and_keeps_provenance(tmp_path, monkeypatch):
    root, name, model = _trained(tmp_path, monkeypatch)
    before = (model / "fold_0" / "checkpoint_final.pth").read_bytes()
    result = export_model("501", "3d_fullres", TRAINER, root / "shipped")
    dest = root / "shipped" / name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert result.destination == dest and result.folds == ["fold_0", "fold_1"]
    for fold in (0, 1):
        ckpt = load_checkpoint(dest / f"fold_{fold}" / "checkpoint_final.pth")
        original = load_checkpoint(model / f"fold_{fold}" / "checkpoint_final.pth")
        assert ckpt["trainer_name"] == "nnUNetTrainer" and original["trainer_name"] == TRAINER
        assert ckpt.keys() == original.keys() and ckpt["init_args"]["fold"] == fold
        assert all(torch.equal(ckpt["network_weights"][k], v) for k, v in original["network_weights"].items())
        assert (dest / f"fold_{fold}" / "validation" / "summary.json").is_file()
        assert not (dest / f"fold_{fold}" / "lesiondiffusion_bank.json").exists()
    for f in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (dest / f).read_bytes() == (model / f).read_bytes()
    prov = json.loads((dest / PROVENANCE_FILE).read_text())
    assert prov["trainer"] == TRAINER and prov["folds"]["fold_1"]["bank"] == {"ratio": 0.5, "fold": 1}
    assert prov["folds"]["fold_0"]["checkpoints"]["checkpoint_final.pth"]["trainer_name"] == TRAINER
    assert (model / "fold_0" / "checkpoint_final.pth").read_bytes() == before        # the original is untouched
    assert not list((root / "shipped" / name).glob(".*partial"))
    with pytest.raises(ConfigError, match="already exists"):
        export_model("501", "3d_fullres", TRAINER, root / "shipped")


def test_predictor_loads_export_as_stock_trainer(tmp_path, monkeypatch):
    """nnU-Net's own predictor, in a process that never imports our trainers, restores the exported network."""
    root, name, _ = _trained(tmp_path, monkeypatch, folds=(0,))
    export_model(name, "3d_fullres", TRAINER, root / "shipped")
    code = ("import sys, torch; from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor as P; "
            "p = P(device=torch.device('cpu')); "
            f"p.initialize_from_trained_model_folder(r'{root / 'shipped' / name / 'nnUNetTrainer__nnUNetPlans__3d_fullres'}', (0,)); "
            "print(type(p.network).__name__, p.trainer_name); "
            "assert not any(m.startswith(('nnunet_trainers', 'synthesis_bank')) for m in sys.modules)")
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "nnUNet_results": str(root / "shipped")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["PlainConvUNet", "nnUNetTrainer"]


def test_refuses_changed_architecture_and_missing_model(tmp_path, monkeypatch):
    root, name, model = _trained(tmp_path, monkeypatch, folds=(0,))
    ckpt = load_checkpoint(model / "fold_0" / "checkpoint_final.pth")
    key = next(iter(ckpt["network_weights"]))
    ckpt["network_weights"][key] = torch.zeros(3, 3)           # a trainer that built another network
    torch.save(ckpt, str(model / "fold_0" / "checkpoint_final.pth"))
    with pytest.raises(ConfigError, match="changed the architecture") as err:
        export_model("501", "3d_fullres", TRAINER, root / "shipped")
    assert "checkpoint_final.pth" in str(err.value)
    assert not (root / "shipped" / name / "nnUNetTrainer__nnUNetPlans__3d_fullres").exists()
    with pytest.raises(ConfigError, match="no such trained model"):
        export_model("501", "2d", TRAINER, root / "shipped")


def test_refuses_trainer_that_overrides_the_network(tmp_path, monkeypatch):
    class nnUNetTrainerLesionDiffusionOwnNet(T.nnUNetTrainerLesionDiffusion):
        @staticmethod
        def build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision=True):
            return T.nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                              num_output_channels, enable_deep_supervision)

    nnUNetTrainerLesionDiffusionOwnNet.ld_run_identity = True          # keep its plain name for this test
    monkeypatch.setattr(T, "nnUNetTrainerLesionDiffusionOwnNet", nnUNetTrainerLesionDiffusionOwnNet, raising=False)
    root, name, model = _trained(tmp_path, monkeypatch, cls=nnUNetTrainerLesionDiffusionOwnNet, folds=(0,))
    with pytest.raises(ConfigError, match="builds its own network"):
        export_model("501", "3d_fullres", "nnUNetTrainerLesionDiffusionOwnNet", root / "shipped")


def test_cli_exit_code_and_message(tmp_path, monkeypatch):
    root, name, _ = _trained(tmp_path, monkeypatch, folds=(0,))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "nnUNet_results": str(root / "nnUNet_results")}
    cmd = [sys.executable, "-m", "ld_augment.cli.main", "nnunet", "export", "-d", "501", "-c", "3d_fullres",
           "-tr", TRAINER, "-o", str(root / "shipped")]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "exported 1 checkpoint(s) of fold_0" in ok.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
