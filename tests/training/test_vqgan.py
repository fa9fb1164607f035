"""The VQ-GAN objective: LPIPS from local weights, 2-D/3-D PatchGAN hinge loss switched on at disc_start,
the discriminator's own optimizer in the resumable state, and the terms recorded in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ld_augment.errors import ConfigError, InputError
from ld_augment.nets import load_checkpoint
from ld_augment.nets.discriminators import PatchDiscriminator, VQGANDiscriminator
from ld_augment.nets.perceptual import SLICES, PerceptualLoss
from ld_augment.training import VQGANOptions, train_vq
from ld_augment.training.vq import axial_axis, hinge_d_loss, take_slices

CROP = (16, 16, 16)
# tiny discriminators on tiny crops; the LPIPS backbone with random weights (no VGG16 file in tests)
GAN = dict(random_backbone=True, disc_layers=2, disc_channels=8, disc_norm="group")


def _log(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_lpips_needs_the_vgg16_file_and_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vgg16-397923af.pth.*--perceptual-weight 0"):
        PerceptualLoss()
    with pytest.raises(InputError, match="does not exist"):
        PerceptualLoss(tmp_path / "missing.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(InputError, match="partial.pth: found 0 of VGG16's 13"):
        PerceptualLoss(tmp_path / "partial.pth")


def test_lpips_loads_torchvision_vgg16_keys(tmp_path: Path) -> None:
    """A torchvision-style state dict (features.N.*) lands in lpips' slices; distances follow the images."""
    rand = PerceptualLoss(random_backbone=True)
    torch.manual_seed(0)
    state = {}
    for k, idx in SLICES:
        for i in idx:
            layer = getattr(rand.lpips.net, f"slice{k}")._modules[str(i)]
            if hasattr(layer, "weight"):
                state[f"features.{i}.weight"] = torch.randn_like(layer.weight) * 0.05
                state[f"features.{i}.bias"] = torch.randn_like(layer.bias) * 0.05
    torch.save({**state, "classifier.0.weight": torch.zeros(2, 2)}, tmp_path / "vgg16.pth")
    loaded = PerceptualLoss(tmp_path / "vgg16.pth")
    assert torch.equal(loaded.lpips.net.slice1._modules["0"].weight, state["features.0.weight"])
    assert torch.equal(loaded.lpips.net.slice5._modules["28"].bias, state["features.28.bias"])
    a = torch.rand(2, 1, 32, 32)
    assert torch.allclose(loaded(a, a), torch.zeros(2), atol=1e-6)
    near, far = loaded(a, (a + 0.02).clamp(0, 1)), loaded(a, 1 - a)
    assert (far > near).all() and not any(p.requires_grad for p in loaded.parameters())


def test_patch_discriminators_and_hinge() -> None:
    d = VQGANDiscriminator(ndf=8, n_layers=2, norm="group")
    l2, l3 = d(torch.rand(2, 1, 24, 24), torch.rand(2, 1, 24, 24, 24))
    assert l2.shape[:2] == (2, 1) and l3.dim() == 5 and l3.shape[:2] == (2, 1)
    assert isinstance(d.image, PatchDiscriminator) and any(isinstance(m, torch.nn.Conv3d) for m in d.volume.modules())
    assert float(hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))) == 0.0  # confident and right
    assert float(hinge_d_loss(torch.zeros(4), torch.zeros(4))) == 1.0


def test_slices_are_taken_along_the_superior_axis() -> None:
    assert axial_axis("SAL") == 0 and axial_axis("RAS") == 2 and axial_axis("LPI") == 2
    vol = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 1, 3, 4, 5)
    got = take_slices(vol, torch.tensor([1, 2]), axis=0)
    assert torch.equal(got[0], vol[0, :, 1]) and torch.equal(got[1], vol[1, :, 2])
    got = take_slices(vol, torch.tensor([4, 0]), axis=2)
    assert torch.equal(got[0], vol[0, :, :, :, 4]) and torch.equal(got[1], vol[1, :, :, :, 0])


def test_discriminator_switches_on_at_disc_start(cases_dir: Path, tmp_path: Path) -> None:
    gan = VQGANOptions(disc_start=2, **GAN)
    res = train_vq(cases_dir, tmp_path / "vq", config="tiny", steps=4, crop_size=CROP, lr=1e-3, progress=False,
                   gan=gan)
    logs = _log(res.log)
    for r in logs[:2]:  # off: loss = L1 + LPIPS + codebook, no discriminator step
        assert "discriminator_loss" not in r and "g_loss" not in r
        assert r["loss"] == pytest.approx(r["l1"] + r["lpips"] + r["codebook"], rel=1e-5)
    for r in logs[2:]:  # on: the adaptive-weighted hinge generator term and the discriminator's own update
        assert {"g_loss", "adaptive_weight", "discriminator_loss", "d_loss_2d", "d_loss_3d"} <= set(r)
        assert r["discriminator_loss"] == pytest.approx(0.5 * (r["d_loss_2d"] + r["d_loss_3d"]), rel=1e-5)
        extra = 0.5 * r["adaptive_weight"] * r["g_loss"]
        assert r["loss"] == pytest.approx(r["l1"] + r["lpips"] + r["codebook"] + extra, rel=1e-4)
    extra = load_checkpoint(res.checkpoint)[2]["extra"]
    assert extra["losses"] == ["l1", "codebook", "lpips", "gan_2d", "gan_3d"]
    assert extra["training"]["objective"]["disc_start"] == 2 and extra["lpips_backbone"] == "random"
    state = torch.load(res.state, weights_only=True)
    assert set(state["phases"]) == {"discriminator"} and state["phases"]["discriminator"]["optimizer"]["state"]


def test_plain_objective_has_no_discriminator(cases_dir: Path, tmp_path: Path) -> None:
    res = train_vq(cases_dir, tmp_path / "vq", config="tiny", steps=2, crop_size=CROP, progress=False,
                   gan=VQGANOptions(perceptual_weight=0, disc_weight=0))
    assert all("discriminator_loss" not in r and "lpips" not in r for r in _log(res.log))
    assert torch.load(res.state, weights_only=True)["phases"] == {}
    assert load_checkpoint(res.checkpoint)[2]["extra"]["losses"] == ["l1", "codebook"]


def test_vqgan_resume_restores_the_discriminator_exactly(cases_dir: Path, tmp_path: Path) -> None:
    gan = VQGANOptions(disc_start=1, **GAN)
    kw = dict(config="tiny", steps=4, crop_size=CROP, lr=1e-3, progress=False, gan=gan, save_every=1)
    full = train_vq(cases_dir, tmp_path / "full", **kw)

    def stop(step: int, logs: dict) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_vq(cases_dir, tmp_path / "cut", callback=stop, **kw)
    resumed = train_vq(cases_dir, tmp_path / "cut", **kw)
    a, b = load_checkpoint(full.checkpoint)[0].state_dict(), load_checkpoint(resumed.checkpoint)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    da = torch.load(full.state, weights_only=True)["phases"]["discriminator"]["module"]
    db = torch.load(resumed.state, weights_only=True)["phases"]["discriminator"]["module"]
    assert all(torch.equal(da[k], db[k]) for k in da)
    keys = ("loss", "discriminator_loss")
    assert [[r.get(k) for k in keys] for r in _log(full.log)] == [[r.get(k) for k in keys] for r in _log(resumed.log)]


def test_crop_too_small_for_the_discriminators_is_readable(cases_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="too small for 3-layer PatchGAN"):
        train_vq(cases_dir, tmp_path / "vq", config="tiny", steps=1, crop_size=CROP, progress=False,
                 gan=VQGANOptions(random_backbone=True))
