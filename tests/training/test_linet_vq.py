"""VQ and LINet training on generated CTs: losses, the frozen VQ, checkpoints and readable errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ld_augment.errors import ConfigError, InputError
from ld_augment.nets import LINET_TINY, VQ_TINY, build_network, load_checkpoint
from ld_augment.text import AttributeEncoder
from ld_augment.text.biomedclip import ENCODER_ID as BIOMEDCLIP_ID
from ld_augment.training import VQGANOptions, train_linet, train_lmnet, train_vq

CROP = (16, 16, 16)
PLAIN = VQGANOptions(perceptual_weight=0, disc_weight=0)  # L1 + codebook: no VGG16 file needed


@pytest.fixture
def tiny_vq(cases_dir: Path, tmp_path: Path) -> Path:
    return train_vq(cases_dir, tmp_path / "vq", config="tiny", steps=2, crop_size=CROP, progress=False,
                    gan=PLAIN).checkpoint


def test_vq_reconstruction_loss_goes_down(cases_dir: Path, tmp_path: Path) -> None:
    res = train_vq(cases_dir, tmp_path / "vq", config="tiny", steps=20, crop_size=CROP, lr=2e-3, progress=False,
                   gan=PLAIN)
    logs = [json.loads(x) for x in res.log.read_text().splitlines()]
    assert len(logs) == 20 and all({"l1", "codebook"} <= set(x) for x in logs)
    first = sum(x["l1"] for x in logs[:3]) / 3
    last = sum(x["l1"] for x in logs[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    _, cfg, meta = load_checkpoint(res.checkpoint)
    assert cfg == VQ_TINY and meta["encoder_id"] is None and meta["extra"]["losses"] == ["l1", "codebook"]


def test_linet_trains_on_the_frozen_vq_latent(cases_dir: Path, tmp_path: Path, tiny_vq: Path) -> None:
    vq_before = load_checkpoint(tiny_vq)[0].state_dict()
    res = train_linet(cases_dir, tmp_path / "li", vq=tiny_vq, config="tiny", steps=3, crop_size=CROP,
                      progress=False, lr=1e-3)
    module, cfg, meta = load_checkpoint(res.checkpoint, expected_encoder_id="ld-vocab-embedding-v1")
    assert cfg == LINET_TINY and meta["extra"]["vq"]["config"] == VQ_TINY.to_dict()
    logs = [json.loads(x) for x in res.log.read_text().splitlines()]
    assert all(x["loss"] == pytest.approx(x["l1"] + x["dice"], rel=1e-5) for x in logs)
    assert all(0 <= x["dice"] <= 1 for x in logs)
    vq_after = load_checkpoint(tiny_vq)[0].state_dict()
    assert all(torch.equal(vq_before[k], vq_after[k]) for k in vq_before)  # the VQ file is untouched


def test_linet_without_vq_is_a_config_error(cases_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="frozen VQ.*--vq"):
        train_linet(cases_dir, tmp_path / "li", config="tiny", steps=1, crop_size=CROP, progress=False)


def test_linet_crop_must_fit_vq_and_unet_downsampling(cases_dir: Path, tmp_path: Path, tiny_vq: Path) -> None:
    with pytest.raises(ConfigError, match="multiples of 4"):
        train_linet(cases_dir, tmp_path / "li", vq=tiny_vq, config="tiny", steps=1, crop_size=(18, 16, 16),
                    progress=False)


def test_linet_and_vq_need_the_ct(make_case, tmp_path: Path, tiny_vq: Path) -> None:
    make_case(tmp_path / "data" / "no_ct", with_ct=False)
    with pytest.raises(InputError, match="lacks ct.nii.gz"):
        train_linet(tmp_path / "data", tmp_path / "li", vq=tiny_vq, config="tiny", steps=1, progress=False)
    with pytest.raises(InputError, match="lacks ct.nii.gz"):
        train_vq(tmp_path / "data", tmp_path / "vq2", config="tiny", steps=1, progress=False, gan=PLAIN)


def test_lmnet_needs_no_ct_and_rejects_healthy_cases(make_case, tmp_path: Path) -> None:
    make_case(tmp_path / "data" / "a", with_ct=False)
    res = train_lmnet(tmp_path / "data", tmp_path / "o", config="tiny", steps=1, crop_size=(8, 16, 16),
                      progress=False)
    assert res.checkpoint.is_file()
    make_case(tmp_path / "healthy" / "b", lesion=False, seed=1)
    with pytest.raises(InputError, match="b/label.nii.gz.*no lesion voxels"):
        train_lmnet(tmp_path / "healthy", tmp_path / "o2", config="tiny", steps=1, crop_size=(8, 16, 16),
                    progress=False)


def test_vq_finetune_from_released_file(cases_dir: Path, tmp_path: Path) -> None:
    module = build_network(VQ_TINY)
    torch.save({"state_dict": dict(module.state_dict())}, tmp_path / "VQ.ckpt")
    res = train_vq(cases_dir, tmp_path / "vq", init=tmp_path / "VQ.ckpt", config="tiny", steps=1, crop_size=CROP,
                   progress=False, gan=PLAIN)
    assert load_checkpoint(res.checkpoint)[2]["extra"]["training"]["init_origin"] == "released"


class _StubBiomedCLIP(AttributeEncoder):
    """Same id as BiomedCLIP (what a released init requires), cheap fixed vectors."""

    encoder_id = BIOMEDCLIP_ID

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.output_dim = dim

    def encode_texts(self, texts):
        return torch.zeros(len(texts), self.output_dim)


def test_linet_finetune_from_released_file_takes_its_vq(cases_dir: Path, tmp_path: Path) -> None:
    unet, vq = build_network(LINET_TINY), build_network(VQ_TINY)
    sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    sd.update({"first_stage_model." + k: v for k, v in vq.state_dict().items()})
    torch.save({"state_dict": sd}, tmp_path / "LINet.ckpt")
    with pytest.raises(ConfigError, match="BiomedCLIP"):
        train_linet(cases_dir, tmp_path / "x", init=tmp_path / "LINet.ckpt", config="tiny", steps=1,
                    crop_size=CROP, progress=False)
    res = train_linet(cases_dir, tmp_path / "li", init=tmp_path / "LINet.ckpt", config="tiny", vq_config="tiny",
                      steps=1, crop_size=CROP, progress=False, encoder=_StubBiomedCLIP(LINET_TINY.context_dim))
    meta = load_checkpoint(res.checkpoint, expected_encoder_id=BIOMEDCLIP_ID)[2]
    assert meta["extra"]["vq"]["source"].endswith("LINet.ckpt")
    assert meta["extra"]["training"]["init_origin"] == "released"


def test_linet_l1_is_normalised_by_the_given_box_mask() -> None:
    """Our recipe divides the masked L1 by the volume of the lesions' box mask, not of the lesion (the released
    recipe's one enclosing box is checked against the original in test_reference_training)."""
    import torch.nn.functional as F

    from ld_augment.diffusion import DDPMSchedule
    from ld_augment.training.linet import linet_batch_loss
    from ld_augment.training.loop import sample_generator

    torch.manual_seed(0)
    vq, unet = build_network(VQ_TINY).eval(), build_network(LINET_TINY)
    image = torch.rand(1, 1, 16, 16, 16)
    grid = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"))
    lesion = (((grid - 8) ** 2).sum(0) <= 16).float()[None, None]
    box = torch.zeros_like(lesion)
    box[..., 4:13, 4:13, 4:13] = 1
    sched = DDPMSchedule.create()
    by_mask = linet_batch_loss(unet, vq, image, lesion, None, [sample_generator(0, 5)], sched)
    by_box = linet_batch_loss(unet, vq, image, lesion, None, [sample_generator(0, 5)], sched, box=box)
    latent = lambda m: float((F.interpolate(m, size=(8, 8, 8), mode="nearest") > 0.5).sum())  # noqa: E731
    assert float(by_box.l1.detach()) * latent(box) == pytest.approx(float(by_mask.l1.detach()) * latent(lesion),
                                                                    rel=1e-4)
    assert latent(box) > latent(lesion) and float(by_box.dice.detach()) == pytest.approx(float(by_mask.dice.detach()))


def test_png_samples_of_linet_and_vq(cases_dir: Path, tmp_path: Path, tiny_vq: Path) -> None:
    """--sample-every: the fixed crop beside the network's output, written atomically as PNG."""
    from ld_augment.training import RunOptions

    train_linet(cases_dir, tmp_path / "li", vq=tiny_vq, config="tiny", steps=1, crop_size=CROP, progress=False,
                run=RunOptions(sample_every=1))
    train_vq(cases_dir, tmp_path / "vq2", config="tiny", steps=2, crop_size=CROP, progress=False, gan=PLAIN,
             run=RunOptions(sample_every=2))
    for png in (tmp_path / "li" / "samples" / "linet_step0000001.png", tmp_path / "vq2" / "samples" /
                "vq_step0000002.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "vq2" / "samples").glob("*.tmp*"))
