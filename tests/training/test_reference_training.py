"""Training against the ORIGINAL's training goldens (reference/training, see its README).

Items: the released recipe's data path (``training.released_items`` through ``CropDataset(items="released")``)
must rebuild the original loader's crops, channels, texts and boxes bit for bit on the three reference cases;
text rules, losses, discriminator layouts and the optimiser / LR / EMA set-up are checked against the same
goldens. Every test skips with a reason when the goldens are absent.
"""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ld_augment.training.crops import CropDataset
from ld_augment.training.sources import read_list_files

LMNET_CROP, LINET_CROP = (64, 152, 152), (128, 128, 128)


def load_golden(path: Path):
    if path.suffix == ".gz":
        return torch.load(io.BytesIO(gzip.decompress(path.read_bytes())), weights_only=True)
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def training_ref(reference_data: Path) -> Path:
    path = reference_data / "training"
    if not (path / "training_config.json").is_file():
        pytest.skip(f"training goldens not found at {path}")
    return path


@pytest.fixture(scope="module")
def original_inputs(training_ref: Path, tmp_path_factory) -> Path:
    """reference/training/inputs with the shared files copied in (its README), list files at the root."""
    shared = training_ref.parent.parent / "data"
    root = tmp_path_factory.mktemp("original_inputs")
    shutil.copytree(training_ref / "inputs" / "data", root / "data")
    copies = {
        "data/liver/liver_cancer/case01": shared / "lesions" / "liver_cancer",
        "data/bladder/bladder_cancer/case02": shared / "lesions" / "bladder_cancer",
    }
    for dst, src in copies.items():
        if not (src / "label.nii.gz").is_file():
            pytest.skip(f"shared lesion annotation {src} not found")
        shutil.copy(src / "label.nii.gz", root / dst / "label.nii.gz")
        shutil.copy(src / "totalseg_v1.nii.gz", root / dst / "totalseg.nii.gz")
    selection = training_ref.parent / "lmnet_selection" / "inputs"
    kidney_seg = selection / "liver" / "liver_cancer" / "case01" / "totalseg.nii.gz"
    shutil.copy(kidney_seg, root / "data/kidney/kidney_tumor/case03/totalseg.nii.gz")
    for f in (training_ref / "inputs" / "lists").iterdir():
        shutil.copy(f, root / f.name)
    return root


@pytest.fixture(scope="module")
def original_cases(original_inputs: Path):
    cases = read_list_files(original_inputs, need=("label", "seg", "report", "ct"))
    assert [c.disease for c in cases] == ["liver_cancer", "bladder_cancer", "kidney_tumor"]
    return cases


def _as_array(t: torch.Tensor) -> np.ndarray:
    return t.numpy().astype(np.int64) if t.dtype == torch.uint8 else t.numpy()


def test_list_files_read_under_the_configs_names(original_inputs: Path, original_cases) -> None:
    """train_image_list.txt (the configs' name) is the CT list; its rows are the cases' CTs."""
    assert not (original_inputs / "train_img_list.txt").exists()
    assert [c.ct.name for c in original_cases] == ["img.nii.gz"] * 3
    assert [c.report.name for c in original_cases] == ["type.json"] * 3


@pytest.fixture(scope="module")
def lmnet_ds(original_cases) -> CropDataset:
    return CropDataset(original_cases, "lmnet", LMNET_CROP, spacing=None, items="released")


@pytest.fixture(scope="module")
def linet_ds(original_cases) -> CropDataset:
    return CropDataset(original_cases, "linet", LINET_CROP, spacing=None, items="released")


def test_lmnet_items_equal_the_originals(training_ref: Path, lmnet_ds: CropDataset) -> None:
    golden = load_golden(training_ref / "items" / "lmnet_items.pt.gz")
    ds = lmnet_ds
    for index, ref in enumerate(golden["items"]):
        item = ds.released_item(index)
        where = ref["case"]
        assert item["start"].tolist() == [int(v) for v in ref["crop"]["crop_start"]], where
        np.testing.assert_array_equal(item["x0"].numpy()[0], _as_array(ref["label"])[0], err_msg=where)
        np.testing.assert_array_equal(item["cond"][0].numpy(), ref["seg"].numpy()[0], err_msg=where)
        np.testing.assert_array_equal(item["cond"][1].numpy(), _as_array(ref["target"])[0], err_msg=where)
        np.testing.assert_array_equal(item["cond"][2].numpy(), _as_array(ref["get_input"]["bbox_channel"])[0, 0],
                                      err_msg=where)
        assert item["texts"] == [v for _, v in ref["text_items"]], where


def test_linet_items_equal_the_originals(training_ref: Path, linet_ds: CropDataset) -> None:
    from ld_augment.training.released_items import vq_item
    golden = load_golden(training_ref / "items" / "linet_items.pt.gz")
    ds = linet_ds
    for index, ref in enumerate(golden["items"]):
        item = ds.released_item(index)
        where = ref["case"]
        assert item["start"].tolist() == [int(v) for v in ref["crop"]["crop_start"]], where
        # exact: HU rounded to float16 and padded with 0 HU before normalisation, as the original
        np.testing.assert_array_equal(item["image"].numpy(), ref["image"].numpy(), err_msg=where)
        np.testing.assert_array_equal(item["lesion"].numpy()[0], (_as_array(ref["label"]) == 2).astype(np.float32),
                                      err_msg=where)
        assert item["texts"] == [v for _, v in ref["text_items"]], where
        # the VQ's crop is LINet's (the VQ data set loads cases the same way)
        np.testing.assert_array_equal(vq_item(ds.case(index)[0], LINET_CROP)["image"].numpy(), ref["image"].numpy(),
                                      err_msg=where)


def test_kidney_case_keys_differ_between_lmnet_and_linet(lmnet_ds: CropDataset, linet_ds: CropDataset) -> None:
    """Case03: LMNet learns the right kidney (lesion overlap), LINet the liver (label-value sum), as the original."""
    lm, li = lmnet_ds.released_item(2), linet_ds.released_item(2)
    assert (lm["organ_id"], li["organ_id"]) == (2, 5)
    # the organ channel is the organ map == key 2, not label >= 1 (which covers three organs here)
    seg = np.rint(lm["cond"][0].numpy() * 104).astype(int)
    np.testing.assert_array_equal(lm["cond"][1].numpy() > 0, seg == 2)


# ------------------------------------------------------------------ text rules (SegToTensor / ToTensor alone)
def _rule_cases(training_ref: Path):
    return load_golden(training_ref / "items" / "text_rules.pt")["cases"]


def test_text_and_key_rules_equal_the_originals(training_ref: Path) -> None:
    from ld_augment.reports.model import reports_from_type_json
    from ld_augment.training import released_items as R
    from ld_augment.reports import conditioning_texts

    checked = 0
    for case in _rule_cases(training_ref):
        if case["name"] == "parenchymal_within_seg_ne_coarseg":
            continue  # paired healthy/lesion CTs (seg != coarseg): not supported, README's difference table
        reports = reports_from_type_json(case["type_json"])
        label, coarseg, seg = (case[k].numpy().astype(np.int64) for k in ("label", "coarseg", "seg"))
        hints = R.folder_hints(case["organ_dir"], case["disease_dir"])
        lm, li = case["lmnet_SegToTensor"], case["linet_ToTensor"]
        if "exception" in lm:  # the original's loader raises (and redraws a case): so must ours
            with pytest.raises(R.SampleError):
                R.require_keys(R.lmnet_report(reports, coarseg, R.largest_component(label == 2)))
            with pytest.raises(R.SampleError):
                R.require_keys(R.linet_report(reports, coarseg, label))
            checked += 1
            continue
        x0 = R.largest_component(label == 2)
        np.testing.assert_array_equal(x0, lm["label_out"].numpy().astype(bool), err_msg=case["name"])
        report = R.lmnet_report(reports, coarseg, x0)
        np.testing.assert_array_equal(R.target_organ(seg, report, reports), lm["target"].numpy().astype(bool),
                                      err_msg=case["name"])
        assert conditioning_texts(report, purpose="lmnet", cavity_text="released", **hints) == [
            v for _, v in lm["text_items"]], case["name"]
        report = R.linet_report(reports, coarseg, label)
        assert conditioning_texts(report, purpose="linet", ct_value_text="released") == [
            v for _, v in li["text_items"]], case["name"]
        checked += 1
    assert checked >= 17


def test_released_ct_value_text_rules() -> None:
    from ld_augment.reports.conditioning import released_ct_value
    assert released_ct_value("Mean density of the lesion region is approximately 57 HU,") == "57.0 HU,"
    assert released_ct_value("approximately -12.5 HU,") == "-12.5 HU,"
    assert released_ct_value("approximately 35.0 HU") == "35.0 HU,"
    for verbatim in ("approximately +20 HU,", "approximately 1.5e2 HU,", "Mean density is around 40 HU,"):
        assert released_ct_value(verbatim) == verbatim


# ------------------------------------------------------------------ losses on fixed inputs
def _tol(ref: torch.Tensor | float) -> float:
    return 1e-5 * max(1.0, float(torch.as_tensor(ref).abs().max()))


def _tiny_unet(reference_data: Path, name: str):
    import json
    from ld_augment.nets import UNet3D, UNetConfig
    root = reference_data / "tiny" / name
    cfg = UNetConfig.from_original_kwargs(json.loads((root / "config.json").read_text())["constructor_kwargs"])
    model = UNet3D(cfg).eval()
    model.load_state_dict(torch.load(root / "state_dict.pt", weights_only=True), strict=True)
    return model


def _tiny_vq(reference_data: Path):
    import json
    from ld_augment.nets import VQConfig, VQModel3D
    root = reference_data / "tiny" / "vq"
    cfg = VQConfig.from_original_kwargs(json.loads((root / "config.json").read_text())["constructor_kwargs"])
    model = VQModel3D(cfg).eval()
    model.load_state_dict(torch.load(root / "state_dict.pt", weights_only=True), strict=True)
    return model


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_lmnet_p_losses_equal_the_originals(training_ref: Path, reference_data: Path, one_thread) -> None:
    from ld_augment.diffusion import DDPMSchedule, q_sample
    from ld_augment.training.lmnet import lmnet_step_loss
    g = load_golden(training_ref / "losses" / "lmnet_p_losses.pt")
    model = _tiny_unet(reference_data, "lmnet_unet")
    x0 = g["batch_label"].float()
    cond = g["get_input_x"]
    box = torch.stack([torch.from_numpy(__import__("ld_augment.training.released_items", fromlist=["x"])
                                        .filled_box(x0[b, 0].numpy() > 0)) for b in range(x0.shape[0])])[:, None]
    np.testing.assert_array_equal(cond[:, 2:3].numpy(), box.numpy())  # the one box of the lesion component
    schedule = DDPMSchedule.create()
    t, noise = torch.as_tensor(g["t"]), g["noise"]
    x_noisy = q_sample(x0, t, noise, schedule)
    assert (x_noisy - g["x_noisy"]).abs().max() <= _tol(g["x_noisy"])
    with torch.no_grad():
        loss = lmnet_step_loss(model, x0, cond, g["context"], t, noise, schedule)
    assert abs(float(loss) - g["loss"]) <= _tol(g["loss"])


def test_linet_p_losses_use_one_enclosing_box(training_ref: Path, reference_data: Path, one_thread) -> None:
    from ld_augment.diffusion import DDPMSchedule
    from ld_augment.training.linet import latent_masks, linet_step_loss
    g = load_golden(training_ref / "losses" / "linet_p_losses.pt")
    vq, model = _tiny_vq(reference_data), _tiny_unet(reference_data, "linet_unet")
    with torch.no_grad():
        z = vq.encode(g["batch_image"])
    assert (z - g["z"]).abs().max() <= _tol(g["z"])
    lesion = (g["batch_label"][:, None] == 2).float()
    fine, coarse = latent_masks(lesion, z.shape[2:], "enclosing")
    np.testing.assert_array_equal(fine.numpy(), g["mask"][:, 1:2].numpy())
    np.testing.assert_array_equal(coarse.numpy(), g["mask"][:, 0:1].numpy())
    assert coarse.flatten(1).sum(1).tolist() == torch.as_tensor(g["coarse_box_voxels"]).tolist()
    # normalising by the lesion mask itself is NOT the original's: a negative control
    _, union = latent_masks(lesion, z.shape[2:], lesion)
    assert union.flatten(1).sum(1).tolist() != torch.as_tensor(g["coarse_box_voxels"]).tolist()
    with torch.no_grad():
        parts = linet_step_loss(model, g["z"], lesion, None, torch.as_tensor(g["t"]), g["noise"],
                                DDPMSchedule.create(), box="enclosing")
    assert abs(float(parts.dice) - g["dice_loss"]) <= _tol(g["dice_loss"])
    assert abs(float(parts.total) - g["loss"]) <= _tol(g["loss"])


# ------------------------------------------------------------------ VQ-GAN: discriminators, LPIPS input, GAN switch
def _loaded_discriminator(state: dict, prefix: str, dims: int, train: bool):
    from ld_augment.nets.discriminators import PatchDiscriminator, from_released_state_dict
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    disc = PatchDiscriminator(dims, 1, ndf=4, n_layers=3)
    disc.load_state_dict(from_released_state_dict(sub), strict=True)
    return disc.train(train)


@pytest.mark.parametrize("name, dims", [("frame_2d", 2), ("ct_3d", 3)])
def test_patchgan_layout_and_logits_equal_the_originals(training_ref: Path, one_thread, name: str, dims: int) -> None:
    g = load_golden(training_ref / "losses" / "vq_discriminators.pt")[name]
    convs = [l for l in g["layers"] if l["type"].startswith("Conv")]
    disc = _loaded_discriminator(g["state_dict"], "", dims, train=False)
    ours = [m for m in disc.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert [list(m.padding) for m in ours] == [l["padding"] for l in convs]  # padding 2 everywhere
    assert [m.bias is not None for m in ours] == [l["bias"] for l in convs] == [True] * 5
    assert [list(m.stride) for m in ours] == [l["stride"] for l in convs]
    with torch.no_grad():
        out = disc(g["input"])
        assert out.shape == g["eval_logits"].shape and (out - g["eval_logits"]).abs().max() <= _tol(g["eval_logits"])
        out = disc.train()(g["input"])  # training: batch statistics, as the original's SyncBatchNorm in train mode
    assert (out - g["train_logits"]).abs().max() <= _tol(g["train_logits"])


def test_vq_objective_equals_the_originals(training_ref: Path, reference_data: Path, one_thread) -> None:
    """No-perceptual variant: every term recomputed, GAN off at global step 50000 and on at 50001."""
    from ld_augment.nets.discriminators import VQGANDiscriminator, from_released_state_dict
    from ld_augment.training import distributed as D
    from ld_augment.training.vq import VQGANObjective, VQGANOptions, global_step
    g = load_golden(training_ref / "losses" / "vq_objective.pt")
    variant = g["variants"]["no_perceptual"]
    vq = _tiny_vq(reference_data)
    state = variant["loss_state_dict"]
    disc = VQGANDiscriminator(1, ndf=4, n_layers=3)
    disc.image.load_state_dict(from_released_state_dict(
        {k[len("frame_discriminator."):]: v for k, v in state.items() if k.startswith("frame_discriminator.")}))
    disc.volume.load_state_dict(from_released_state_dict(
        {k[len("ct_discriminator."):]: v for k, v in state.items() if k.startswith("ct_discriminator.")}))
    disc.train()
    gan = VQGANOptions(perceptual_weight=0.0, disc_start_unit="optimizer_steps")
    objective = VQGANObjective(vq, gan, D.init("cpu"), 0, None, disc)
    image = g["input"]
    for run in variant["runs"]:
        index = torch.as_tensor(run["slice_index"])
        active = run["global_step"] >= gan.disc_start
        if run["optimizer_idx"] == 0:
            loss, logs, recon = objective.generator_terms(vq, image, index, active)
            assert (recon - g["reconstruction"]).abs().max() <= _tol(g["reconstruction"])
            if active:
                assert abs(gan.disc_weight * logs["adaptive_weight"] - float(run["log"]["train/d_weight"])) <= 1e-4
        else:
            if not active:
                assert float(run["loss"]) == 0.0
                continue
            loss, _ = objective.discriminator_terms(disc, image, g["reconstruction"], index)
        where = (run["global_step"], run["optimizer_idx"])
        assert abs(float(loss.detach()) - float(run["loss"])) <= _tol(run["loss"]), where
    # the pinned Lightning's global_step counts both optimizers: batch k (0-based) is 2k / 2k + 1
    assert [global_step(b, p, "optimizer_steps") for b, p in ((1, 0), (1, 1), (25001, 0), (25001, 1), (25002, 0))] \
        == [0, 1, 50000, 50001, 50002]
    on = VQGANObjective(vq, gan, D.init("cpu"), 0, None, disc)
    assert (on.gan_on(25001, 0), on.gan_on(25001, 1), on.gan_on(25002, 0)) == (False, True, True)


def test_lpips_gets_unit_range_slices_with_dropout(training_ref: Path, one_thread) -> None:
    """The released recipe feeds LPIPS the [0, 1] slices as is and trains with its dropout active."""
    from ld_augment.nets.perceptual import PerceptualLoss
    g = load_golden(training_ref / "losses" / "vq_objective.pt")
    seen = []
    released = PerceptualLoss(random_backbone=True, input_range="unit", dropout=True).train()
    assert any(m.training for m in released.modules() if isinstance(m, torch.nn.Dropout))
    released.lpips.register_forward_pre_hook(lambda module, args: seen.append(args[:2]))
    with torch.no_grad():
        released(g["lpips_call_input"], g["lpips_call_target"])
        released.input_range, released.dropout = "symmetric", False  # our recipe's LPIPS, same backbone
        released.train()
        assert not any(m.training for m in released.modules() if isinstance(m, torch.nn.Dropout))
        released(g["lpips_call_input"], g["lpips_call_target"])
        released.input_range = "unit"
    (a, b), (c, _) = seen
    assert torch.equal(a[:, :1], g["lpips_call_input"]) and torch.equal(b[:, :1], g["lpips_call_target"])
    assert not torch.equal(c[:, :1], g["lpips_call_input"])  # negative control: our recipe's [-1, 1] mapping
    scaling = load_golden(training_ref / "losses" / "lpips_scaling.pt")
    layer = released.lpips.scaling_layer  # lpips' own ScalingLayer on what we pass reproduces the original's
    for key in ("input", "target"):
        out = layer(scaling[key].expand(-1, 3, -1, -1))
        assert (out - scaling[f"scaled_{key}"]).abs().max() <= _tol(scaling[f"scaled_{key}"])


# ------------------------------------------------------------------ optimisers, learning rates, EMA
@pytest.fixture(scope="module")
def training_config(training_ref: Path) -> dict:
    import json
    return json.loads((training_ref / "training_config.json").read_text())


@pytest.mark.parametrize("kind", ["lmnet", "linet", "vq"])
def test_released_recipe_learning_rate_and_optimizer(training_config: dict, kind: str) -> None:
    from ld_augment.training.recipe import get_recipe
    cfg = training_config[kind]
    recipe = get_recipe(kind, None, "released")  # a released init picks the released recipe
    assert recipe.name == "released" and recipe.base_lr == cfg["base_learning_rate"]["value"]
    # main.py: accumulate_grad_batches x ngpu x batch_size x base_lr (examples: 4 GPUs, batch 1)
    example = training_config["learning_rate_scaling"]["examples"][f"{kind}_4gpu"]
    assert recipe.learning_rate(world_size=4) == pytest.approx(float(example.split("=")[-1]))
    assert recipe.learning_rate(world_size=2, batch_size=3, grad_accum=2) == pytest.approx(12 * recipe.base_lr)
    opt = cfg["optimizer"] if kind != "vq" else cfg["optimizers"]["generator"]
    assert {"torch.optim.AdamW": "adamw", "torch.optim.Adam": "adam"}[opt["class"]] == recipe.optimizer
    assert list(recipe.betas) == opt["betas"] and recipe.weight_decay == opt.get("weight_decay", 0.01)
    if kind == "vq":
        disc = cfg["optimizers"]["discriminators"]
        assert (recipe.disc_optimizer, list(recipe.disc_betas), recipe.disc_weight_decay) == (
            "adam", disc["betas"], disc["weight_decay"])
        assert (recipe.disc_start_unit, recipe.lpips_input, recipe.lpips_dropout) == ("optimizer_steps", "unit", True)
    else:
        assert recipe.continue_ema and recipe.items == "released" and recipe.spacing is None
    assert get_recipe(kind, None, "checkpoint").name == get_recipe(kind, None, None).name == "ours"


def test_optimizers_built_as_the_recipe_says() -> None:
    """The loop builds torch.optim.Adam(0.5, 0.9, no decay) / AdamW(0.9, 0.999, 0.01) from the options."""
    from ld_augment.training.loop import TrainOptions, _make_part
    from ld_augment.training import distributed as D
    module = torch.nn.Linear(2, 2)
    for name, cls, betas, wd in (("adam", torch.optim.Adam, (0.5, 0.9), 0.0),
                                 ("adamw", torch.optim.AdamW, (0.9, 0.999), 0.01)):
        opts = TrainOptions(optimizer=name, betas=betas, weight_decay=wd)
        part = _make_part("model", module, None, 2e-5, wd, betas, opts, D.init("cpu"), name)
        group = part.opt.param_groups[0]
        assert type(part.opt) is cls and group["betas"] == betas and group["weight_decay"] == wd
        assert group["eps"] == 1e-8 and group["lr"] == 2e-5


def test_ema_warmup_equals_the_originals(training_config: dict) -> None:
    """decay_eff = min(0.9999, (1 + n) / (10 + n)) after n += 1: the config's examples n = 1, 10, 1000."""
    from ld_augment.training.loop import EMA
    assert training_config["lmnet"]["ema"]["decay"] == 0.9999
    for n, want in ((1, 0.1818), (10, 0.55), (1000, 0.99108)):
        ema = EMA(torch.nn.Linear(1, 1, bias=False), 0.9999)
        ema.num_updates = n - 1
        with torch.no_grad():
            ema.module.weight.fill_(1.0)
        model = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(0.0)
        ema.update(model)  # shadow -= (1 - d) * (shadow - param): shadow = d
        assert float(ema.module.weight) == pytest.approx(want, abs=1e-4)
        assert ema.num_updates == n
